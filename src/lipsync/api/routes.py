"""The HTTP endpoints. Handlers stay thin: validate (schemas), check (SSRF, models ready), hand the job
to the runner, translate records into response models."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from lipsync import __version__
from lipsync.api.errors import ResultNotReady, ResultNotStored, Unauthorized, failure_response
from lipsync.api.events import events_response, job_events
from lipsync.api.result_file import held_file
from lipsync.api.schemas import (
    ErrorOut,
    FaceTrackingIn,
    FaceTrackingOut,
    HealthOut,
    InfoOut,
    JobAccepted,
    JobListOut,
    JobOut,
    LipSyncIn,
    LipSyncOut,
)
from lipsync.api.upload_job import UPLOAD_DESCRIPTION, UPLOAD_OPENAPI, receive_and_submit
from lipsync.errors import InputError
from lipsync.jobs.models import JOB_STATUSES, JobRecord
from lipsync.options import LipSyncOptions
from lipsync.options_doc import option_schema

UPLOAD_PATH = "/lipsync/upload"
TRACKING_UPLOAD_PATH = "/face-tracking/upload"
# Routes whose body is streamed media (their size cap is the uploads', not the JSON bodies').
UPLOAD_PATHS = (UPLOAD_PATH, TRACKING_UPLOAD_PATH)
MAX_LIST_LIMIT = 100

ENDPOINTS = {
    "GET /health": "model loading status, GPU and queue",
    "GET /": "this information",
    "POST /face-tracking": "track characters; visualization video + tracks JSON",
    "POST /face-tracking/upload": "the same with an uploaded video and reference photos (multipart/form-data)",
    "GET /jobs": "recent jobs, newest first (?limit=&status=&before=)",
    "GET /jobs/{id}/events": "a job's progress as server-sent events, until it ends",
    "GET /options": "every job setting: type, default, range, description (the form of /ui)",
    "GET /ui": "a web page to try the service",
    "POST /lipsync": "lip-sync a video to an audio (waits unless \"async\": true)",
    "POST /lipsync/upload": "the same with uploaded files (multipart/form-data) instead of URLs",
    "POST /jobs": "queue a lip-sync job (202 + job id)",
    "GET /jobs/{id}": "job status, per-stage progress, result or error",
    "DELETE /jobs/{id}": "cancel a job",
    "GET /jobs/{id}/result": "the output MP4 when no upload_url was given",
    "GET /metrics": "Prometheus metrics",
    "GET /docs": "OpenAPI documentation with examples",
}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(record: JobRecord) -> dict[str, Any]:
    """The public JSON of a job (GET /jobs/{id} and the webhook body)."""
    error = None
    if record.error is not None:
        error = {"code": record.error.code, "message": record.error.message}
        if record.error.field:
            error["field"] = record.error.field
    return {
        "id": record.id,
        "kind": record.kind,
        "status": record.status,
        "stage": record.stage,
        "progress": {k: {"done": v.done, "total": v.total, "fraction": round(v.fraction, 4)}
                     for k, v in record.progress.items()},
        "result": record.result,
        "error": error,
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
    }


class Waiters:
    """Lets async handlers await a job's end without holding a thread: the runner's listener resolves
    futures on their own event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}

    def __call__(self, record: JobRecord) -> None:
        with self._lock:
            waiting = self._futures.pop(record.id, [])
        for loop, fut in waiting:
            loop.call_soon_threadsafe(lambda f=fut, r=record: f.done() or f.set_result(r))

    async def wait(self, job_id: str, store) -> JobRecord:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            self._futures.setdefault(job_id, []).append((loop, fut))
        record = await run_in_threadpool(store.get, job_id)
        if record.is_final:  # finished before we registered
            with self._lock:
                entries = self._futures.get(job_id, [])
                self._futures[job_id] = [e for e in entries if e[1] is not fut]
            return record
        return await fut


async def _holds_key(auth, request: Request) -> bool:
    """Whether the request carries the right API key (for /health, which answers everyone)."""
    try:
        await auth(request)
    except Unauthorized:
        return False
    return True


_ERRORS = {
    400: {"model": ErrorOut, "description": "Bad media, download failure or a body that is not JSON"},
    401: {"model": ErrorOut, "description": "Missing or wrong API key"},
    413: {"model": ErrorOut, "description": "Input too large"},
    422: {"model": ErrorOut, "description": "Validation error, unsafe URL or unusable media"},
    429: {"model": ErrorOut, "description": "Queue full"},
    503: {"model": ErrorOut, "description": "Models not ready"},
}


def build_routers(auth, route_class: type[APIRoute] = APIRoute) -> tuple[APIRouter, APIRouter]:
    public = APIRouter(route_class=route_class)
    private = APIRouter(dependencies=[Depends(auth)], responses={401: _ERRORS[401]}, route_class=route_class)

    @public.get("/health", response_model=HealthOut, summary="Health: models, GPU, queue")
    async def health(request: Request) -> dict[str, Any]:
        state = request.app.state.lipsync
        loaded = state.engine.models_loaded()
        dev = state.device_info
        gate = state.gate
        overall = gate.state
        status = {"ready": "healthy", "idle": "healthy", "loading": "loading", "degraded": "degraded",
                  "failed": "unhealthy"}[overall]
        if overall == "loading" and not gate.preload:
            status = "healthy"  # lazy mode: a first job loading the models does not make the server unready
        body = {
            "status": status,
            "insightface_loaded": loaded.get("insightface", False),
            "wav2lip_loaded": loaded.get("wav2lip", False),
            "gfpgan_loaded": loaded.get("gfpgan", False),
            "gpu_available": dev.get("gpu_available", False),
            "gpu_name": dev.get("gpu_name"),
            "gpu_memory_gb": dev.get("gpu_memory_gb"),
            "queue_depth": await run_in_threadpool(lambda: state.runner.queue_depth),
            "running_jobs": state.runner.running_jobs,
            "models": overall,
            "model_states": dict(gate.states),
            # /health needs no key: names, states and codes only; the messages (with server paths) are
            # for callers that hold the API key.
            "models_error": gate.summary(),
        }
        keyed = bool(state.settings.api_key) and await _holds_key(auth, request)
        body["models_detail"] = (gate.details() or None) if keyed else None
        return body

    @public.get("/options", summary="Every job setting, from the options model")
    async def options() -> dict[str, Any]:
        """For forms (the /ui page): each setting's name, type, default, range or choices, description,
        group and the job kinds that use it. The same model validates every request."""
        return option_schema(LipSyncOptions)

    @private.get("/", response_model=InfoOut, summary="API information")
    async def info() -> dict[str, Any]:
        return {"name": "lipsync", "version": __version__, "endpoints": ENDPOINTS}

    async def _submit(request: Request, kind: str, body: LipSyncIn | FaceTrackingIn) -> JobRecord:
        state = request.app.state.lipsync
        state.gate.check_accepting(state.models_for(kind, body.job_options()))
        params = body.job_params()
        await run_in_threadpool(state.check_urls, params)
        return await run_in_threadpool(
            state.runner.submit, kind, params, webhook_url=params.get("webhook_url")
        )

    def _accepted(record: JobRecord) -> JSONResponse:
        return JSONResponse(
            {"job_id": record.id, "status": record.status, "status_url": f"/jobs/{record.id}"},
            status_code=202, headers={"Location": f"/jobs/{record.id}"},
        )

    async def _finish_sync(request: Request, record: JobRecord, extra_keys: tuple[str, ...]) -> JSONResponse:
        state = request.app.state.lipsync
        final = await state.waiters.wait(record.id, state.store)
        if final.status != "succeeded":
            if final.error is not None:
                return failure_response(final.error)
            return JSONResponse({"error": {"code": final.status, "message": f"job {final.status}"}},
                                status_code=500)
        result = final.result or {}
        body = {"job_id": final.id, "status": final.status, "output_url": result.get("output_url"),
                "download_url": result.get("download_url"), "duration": result.get("duration", 0.0),
                "stats": result.get("stats", {})}
        for key in extra_keys:
            body[key] = result.get(key)
        return JSONResponse(body)

    @private.post(
        "/lipsync", summary="Lip-sync a video to new audio",
        responses={200: {"model": LipSyncOut}, 202: {"model": JobAccepted}, **_ERRORS},
        response_model=None,
    )
    async def lipsync(request: Request, body: LipSyncIn) -> JSONResponse:
        """Downloads the inputs, runs face tracking -> Wav2Lip -> optional GFPGAN, and PUTs the MP4 to
        `upload_url`. Waits for the result by default; with `"async": true` answers 202 with a job id."""
        record = await _submit(request, "lipsync", body)
        if body.async_:
            return _accepted(record)
        return await _finish_sync(request, record, ())

    @private.post(
        UPLOAD_PATH, summary="Lip-sync uploaded files", description=UPLOAD_DESCRIPTION,
        responses={200: {"model": LipSyncOut}, 202: {"model": JobAccepted}, **_ERRORS,
                   415: {"model": ErrorOut, "description": "Not multipart/form-data"}},
        response_model=None, openapi_extra=UPLOAD_OPENAPI,
    )
    async def lipsync_upload(request: Request) -> JSONResponse:
        # The body is parsed by hand (streamed to the job's scratch folder), so FastAPI reads none of it;
        # the auth dependency has run by now, before any byte of the upload is read.
        state = request.app.state.lipsync
        state.gate.check_accepting(state.models_for("lipsync"))  # enhancement: once options are read
        record, async_ = await receive_and_submit(request, state)
        if async_:
            return _accepted(record)
        return await _finish_sync(request, record, ())

    @private.post(
        "/jobs", summary="Queue a lip-sync job", status_code=202,
        responses={202: {"model": JobAccepted}, **_ERRORS}, response_model=None,
    )
    async def create_job(request: Request, body: LipSyncIn) -> JSONResponse:
        """Same body as POST /lipsync; always asynchronous."""
        return _accepted(await _submit(request, "lipsync", body))

    @private.post(
        "/face-tracking", summary="Track faces and render a visualization",
        responses={200: {"model": FaceTrackingOut}, 202: {"model": JobAccepted}, **_ERRORS},
        response_model=None,
    )
    async def face_tracking(request: Request, body: FaceTrackingIn) -> JSONResponse:
        """Renders the video with a coloured box per tracked character, uploads it to `upload_url` (or
        keeps it for GET /jobs/{id}/result) and returns the tracks JSON."""
        record = await _submit(request, "face_tracking", body)
        if body.async_:
            return _accepted(record)
        return await _finish_sync(request, record, ("tracks",))

    @private.post(
        TRACKING_UPLOAD_PATH, summary="Track faces in an uploaded video",
        description="The same as POST /face-tracking with the files uploaded (multipart/form-data): a "
        "`video` part, `references` parts and an `options` JSON part (the /face-tracking fields without "
        "`video_url`, each character naming its photo(s) by file name in `reference`).",
        responses={200: {"model": FaceTrackingOut}, 202: {"model": JobAccepted}, **_ERRORS,
                   415: {"model": ErrorOut, "description": "Not multipart/form-data"}},
        response_model=None,
    )
    async def face_tracking_upload(request: Request) -> JSONResponse:
        state = request.app.state.lipsync
        state.gate.check_accepting(state.models_for("face_tracking"))
        record, async_ = await receive_and_submit(request, state, "face_tracking")
        if async_:
            return _accepted(record)
        return await _finish_sync(request, record, ("tracks",))

    @private.get("/jobs", response_model=JobListOut, summary="Recent jobs, newest first")
    async def list_jobs(request: Request, limit: int = 20, status: str | None = None,
                        before: str | None = None) -> dict[str, Any]:
        """Pages of at most `limit` (1-100) jobs, newest first, optionally of one `status`; pass the
        previous page's `next` as `before` for the page after it."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InputError(f"limit: must be 1-{MAX_LIST_LIMIT}, got {limit}", field="limit")
        if status is not None and status not in JOB_STATUSES:
            raise InputError(f"status: must be one of {', '.join(JOB_STATUSES)}, got {status!r}", field="status")
        store = request.app.state.lipsync.store
        records = await run_in_threadpool(lambda: store.recent(limit + 1, status=status, before=before))
        page = records[:limit]
        return {"jobs": [job_view(r) for r in page], "next": page[-1].id if len(records) > limit else None}

    @private.get(
        "/jobs/{job_id}/events", summary="Job progress as server-sent events",
        responses={200: {"content": {"text/event-stream": {}}, "description": "progress events, then end"},
                   404: {"model": ErrorOut, "description": "Unknown job"}},
        response_class=JSONResponse,
    )
    async def job_events_stream(request: Request, job_id: str):
        """`event: progress` with `{status, stage, done, total, attempts, progress}` (every stage so far)
        whenever the job changes, then
        one `event: end` with the job's JSON (as GET /jobs/{id}); the stream closes when the job ends."""
        state = request.app.state.lipsync
        await run_in_threadpool(state.store.get, job_id)  # 404 now, not inside the stream
        return events_response(job_events(job_id, state.store.get, job_view, state.event_streams))

    @private.get("/jobs/{job_id}", response_model=JobOut, summary="Job status",
                 responses={404: {"model": ErrorOut, "description": "Unknown job"}})
    async def get_job(request: Request, job_id: str) -> dict[str, Any]:
        return job_view(await run_in_threadpool(request.app.state.lipsync.store.get, job_id))

    @private.delete("/jobs/{job_id}", response_model=JobOut, summary="Cancel a job",
                    responses={404: {"model": ErrorOut, "description": "Unknown job"}})
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        """Cancels a queued or running job (a running one stops at its next progress report). For a job
        that already ended, deletes its stored result file (if it kept one) and returns the job unchanged."""
        state = request.app.state.lipsync
        record = await run_in_threadpool(state.runner.cancel, job_id)
        if record.is_final:
            await run_in_threadpool(state.work.results.delete, job_id)
        return job_view(record)

    @private.get(
        "/jobs/{job_id}/result", summary="Download the output MP4", response_class=FileResponse,
        responses={200: {"content": {"video/mp4": {}}, "description": "The MP4"},
                   404: {"model": ErrorOut, "description": "Unknown job, or the result was uploaded"},
                   409: {"model": ErrorOut, "description": "The job has not succeeded"}},
    )
    async def job_result(request: Request, job_id: str) -> FileResponse:
        state = request.app.state.lipsync
        record = await run_in_threadpool(state.store.get, job_id)
        if record.status != "succeeded":
            raise ResultNotReady(f"job {job_id} is {record.status}; the result exists once it succeeded")
        results = state.work.results
        path = await run_in_threadpool(results.local_path, job_id)
        held = None if path is None else await run_in_threadpool(held_file, path)
        if held is not None:
            served, stat, close = held
            return FileResponse(served, stat_result=stat, media_type="video/mp4", filename=f"{job_id}.mp4",
                                background=BackgroundTask(close))  # fmt: skip
        chunks = None if (record.result or {}).get("output_url") else await run_in_threadpool(results.open, job_id)
        if chunks is None:
            if (record.result or {}).get("output_url"):
                raise ResultNotStored("this job's result was uploaded to its upload_url, not kept here")
            raise ResultNotStored(f"the result of job {job_id} is no longer stored (deleted by DELETE /jobs/{job_id}"
                                  " or by retention: LIPSYNC_RESULT_RETENTION_S)")
        # A shared bucket: streamed through this node (the job id stays the only capability needed).
        return StreamingResponse(iterate_in_threadpool(chunks), media_type="video/mp4",
                                 headers={"Content-Disposition": f'attachment; filename="{job_id}.mp4"'})

    return public, private
