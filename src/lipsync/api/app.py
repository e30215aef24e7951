"""The app factory: ``create_app(settings, *, pipeline_factory=None) -> FastAPI``.

Wires the pieces: SQLite store, job runner (worker pool) running ``JobWork`` (download -> engine ->
upload), model gate (PRELOAD_MODELS), webhook sender, auth and the error handlers. ``pipeline_factory``
builds the engine from the settings; the default runs the real pipeline, tests pass a fast fake.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from filelock import FileLock, Timeout

from lipsync import __version__
from lipsync.api.auth import ApiKeyCheck, make_auth_dependency
from lipsync.api.backend import RemoteEngine, build_backend
from lipsync.api.errors import install_error_handlers
from lipsync.api.events import StreamCounter
from lipsync.api.fetch import Fetcher, FetchLimits
from lipsync.api.gate import BodyRule, RequestGate
from lipsync.api.jsonbody import JSONBodyRoute
from lipsync.api.metrics import install_metrics
from lipsync.api.netguard import check_url
from lipsync.api.receive import upload_body_limit
from lipsync.api.routes import UPLOAD_PATHS, Waiters, build_routers
from lipsync.api.ui import UI_STATIC_PREFIX, mount_ui
from lipsync.api.upload import Uploader
from lipsync.api.work import JobWork
from lipsync.config import Settings
from lipsync.jobs.engine import Engine, PipelineFactory, default_pipeline_factory, device_type_for
from lipsync.jobs.gate import ModelGate, models_needed
from lipsync.jobs.metrics import Metrics
from lipsync.jobs.results import results_store_from_url
from lipsync.jobs.runner import JobRunner
from lipsync.jobs.store import JobStore
from lipsync.jobs.webhooks import WebhookSender
from lipsync.options import LipSyncOptions, TrackOptions, resolve_enhance

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
    metrics: Metrics | None = None
    event_streams: StreamCounter = dc_field(default_factory=StreamCounter)

    def models_for(self, kind: str, options: TrackOptions | None = None) -> tuple[str, ...]:
        """The engine models a new job needs; enhancement counts once its options are known."""
        if kind == "face_tracking":
            return models_needed(kind)
        enhance = isinstance(options, LipSyncOptions) and resolve_enhance(
            options.enhance, device_type_for(self.settings, self.device_info)
        )
        return models_needed(kind, enhance)

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
    api_only = bool(settings.redis_url) and not settings.run_workers  # the models live on the workers
    engine = RemoteEngine() if api_only else (pipeline_factory or default_pipeline_factory)(settings)
    device_info = engine.device_info()
    limits = FetchLimits.from_settings(settings)
    fetcher = Fetcher(limits, allow_private=settings.allow_private_urls)
    uploader = Uploader(limits, allow_private=settings.allow_private_urls)
    gate = ModelGate(engine, preload=settings.preload_models and not api_only)
    shared = results_store_from_url(settings.results_url, endpoint_url=settings.s3_endpoint_url) \
        if settings.results_url else None
    work = JobWork(settings, engine, gate, fetcher, uploader, work_dir / "results", results=shared)
    metrics = Metrics()
    api_key = ApiKeyCheck(settings.api_key)

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
        waiters = Waiters()
        # Embedded (SQLite + threads) unless LIPSYNC_REDIS_URL names a cluster (see api/backend.py).
        backend = build_backend(settings, work, fetcher=fetcher, waiters=waiters, metrics=metrics, gate=gate,
                                work_dir=work_dir, db_path=db_path, workers=_worker_count(settings, device_info))
        store, runner = backend.store, backend.runner
        app.state.lipsync = AppState(settings, engine, gate, store, runner, work, backend.webhooks, waiters,
                                     fetcher, uploader, device_info, metrics)
        gate.start()
        backend.start()
        log.info("lipsync API ready: jobs in %s, work dir %s", "Redis" if settings.redis_url else db_path, work_dir)
        try:
            yield
        finally:
            backend.stop()
            lock.release()

    app = FastAPI(
        title="lipsync",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)

    # JSON bodies are small documents: bounded in size and in total time. The upload endpoint carries
    # media: its cap is the sum of the per-file limits (each part is also checked while it streams), and
    # it gets the time a URL download of the same inputs would (a trickling client cannot hold it longer).
    json_rule = BodyRule(MAX_BODY_BYTES, settings.http_body_timeout_s, settings.http_body_timeout_s)
    upload_rule = BodyRule(upload_body_limit(settings.max_download_bytes), settings.http_body_timeout_s,
                           settings.download_total_timeout_s)
    # The web page and the settings' description are public like the docs; the page's calls carry the key.
    public_paths = {"/health", "/options", "/ui", "/ui/", app.docs_url, app.redoc_url, app.openapi_url,
                    app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(
        RequestGate, auth=api_key,
        is_public=lambda path: path in public_paths or path.startswith(UI_STATIC_PREFIX),
        rule_for=lambda path: upload_rule if path in UPLOAD_PATHS else json_rule,
    )  # fmt: skip

    install_metrics(app, metrics, make_auth_dependency(api_key))
    public, private = build_routers(make_auth_dependency(api_key), route_class=JSONBodyRoute)
    app.include_router(public)
    app.include_router(private)
    mount_ui(app)
    return app
