"""The app factory: ``create_app(settings, *, pipeline_factory=None) -> FastAPI``.

Wires the pieces: SQLite store, job runner (worker pool) running ``JobWork`` (download -> engine ->
upload), model gate (PRELOAD_MODELS), webhook sender, auth and the error handlers. ``pipeline_factory``
builds the engine from the settings; the default runs the real pipeline, tests pass a fast fake.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from filelock import FileLock, Timeout

from lipsync import __version__
from lipsync.api.auth import make_auth_dependency
from lipsync.api.errors import error_response, install_error_handlers
from lipsync.api.fetch import Fetcher, FetchLimits
from lipsync.api.netguard import check_url
from lipsync.api.receive import upload_body_limit
from lipsync.api.routes import UPLOAD_PATH, Waiters, build_routers, job_view
from lipsync.api.upload import Uploader
from lipsync.api.work import JobWork
from lipsync.config import Settings
from lipsync.jobs.engine import Engine, ModelGate, PipelineFactory, default_pipeline_factory
from lipsync.jobs.runner import JobRunner
from lipsync.jobs.store import JobStore
from lipsync.jobs.webhooks import WebhookSender

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024

DESCRIPTION = """Lip-sync faces in a video to a new audio track (Wav2Lip + face tracking + optional GFPGAN).

* `POST /lipsync` waits for the result; add `"async": true` (or use `POST /jobs`) for a job id to poll.
* `POST /lipsync/upload` does the same with the files uploaded (multipart/form-data) instead of URLs.
* Inputs are downloaded from http(s) URLs (private and loopback addresses are refused unless
  `LIPSYNC_ALLOW_PRIVATE_URLS=true`); the output MP4 is PUT to `upload_url`, or kept for
  `GET /jobs/{id}/result`.
* Errors share one shape: `{"error": {"code": "...", "message": "...", "field": "..."}}`.
* With `LIPSYNC_API_KEY` set, send `Authorization: Bearer <key>` (all endpoints but `/health`).
"""


def default_work_dir() -> Path:
    return Path.home() / ".cache" / "lipsync" / "work"


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    gate: ModelGate
    store: JobStore
    runner: JobRunner
    work: JobWork
    webhooks: WebhookSender
    waiters: Waiters
    fetcher: Fetcher
    uploader: Uploader
    device_info: dict[str, Any]

    def check_urls(self, params: dict[str, Any]) -> None:
        """Early SSRF check at submission, so an unsafe URL is a 422 now rather than a failed job later
        (every connection is checked again when it is made)."""
        allow = self.settings.allow_private_urls
        urls = [("video_url", params.get("video_url")), ("audio_url", params.get("audio_url")),
                ("upload_url", params.get("upload_url")), ("webhook_url", params.get("webhook_url"))]
        for i, c in enumerate(params.get("characters") or []):
            urls += [(f"characters[{i}].reference_image_url", c.get("reference_image_url")),
                     (f"characters[{i}].audio_url", c.get("audio_url"))]
        for field, url in urls:
            if url:
                check_url(url, allow_private=allow, field=field)


def _worker_count(settings: Settings, device_info: dict[str, Any]) -> int:
    if settings.workers:
        return settings.workers
    return max(1, int(device_info.get("gpu_count") or 0))


def create_app(settings: Settings, *, pipeline_factory: PipelineFactory | None = None) -> FastAPI:
    # httpx logs every request URL at INFO; presigned URLs carry credentials in their query string.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work_dir = Path(settings.work_dir) if settings.work_dir else default_work_dir()
    db_path = Path(settings.jobs_db) if settings.jobs_db else work_dir / "jobs.sqlite3"
    engine = (pipeline_factory or default_pipeline_factory)(settings)
    device_info = engine.device_info()
    limits = FetchLimits.from_settings(settings)
    fetcher = Fetcher(limits, allow_private=settings.allow_private_urls)
    uploader = Uploader(limits, allow_private=settings.allow_private_urls)
    gate = ModelGate(engine, preload=settings.preload_models)
    work = JobWork(settings, engine, gate, fetcher, uploader, work_dir / "results")
    auth = make_auth_dependency(settings.api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One server per work dir: startup wipes leftover scratch and requeues 'running' jobs, which
        # would break a second live server sharing the folder. The OS drops the lock if we crash.
        work_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(work_dir / "server.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RuntimeError(
                f"another lipsync server is using {work_dir}; give each server its own LIPSYNC_WORK_DIR"
            ) from None
        store = JobStore(db_path)
        runner = JobRunner(store, work, scratch_dir=work_dir / "tmp",
                           workers=_worker_count(settings, device_info), queue_size=settings.queue_size)
        webhooks = WebhookSender(
            secret=settings.webhook_secret,
            payload=lambda record: {"job_id": record.id, **job_view(record)},
            client_factory=fetcher.client,
            guard=lambda url: check_url(url, allow_private=settings.allow_private_urls, field="webhook_url"),
        )
        waiters = Waiters()
        runner.add_listener(waiters)
        runner.add_listener(webhooks)
        app.state.lipsync = AppState(settings, engine, gate, store, runner, work, webhooks, waiters, fetcher,
                                     uploader, device_info)
        gate.start()
        runner.start()
        log.info("lipsync API ready: jobs in %s, work dir %s", db_path, work_dir)
        try:
            yield
        finally:
            runner.stop()
            webhooks.join()
            store.close()
            lock.release()

    app = FastAPI(
        title="lipsync",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)

    upload_limit = upload_body_limit(settings.max_download_bytes)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Request bodies are small JSON documents; refuse big ones before reading them. The upload
        # endpoint carries media: its cap is the sum of the per-file limits (each part is also checked,
        # and the running total, while it streams in, for bodies sent without a Content-Length).
        limit = upload_limit if request.url.path == UPLOAD_PATH else MAX_BODY_BYTES
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > limit):
            return error_response(413, "request_too_large", f"request body over {limit} bytes")
        return await call_next(request)

    public, private = build_routers(auth)
    app.include_router(public)
    app.include_router(private)
    return app
