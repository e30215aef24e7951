"""GET /metrics (Prometheus text format) and the middleware that counts HTTP requests.

Requests are labelled by route template (``/jobs/{job_id}``), never by raw path, so job ids do not
become label values; paths that match no route count as ``unmatched``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from lipsync.jobs.metrics import CONTENT_TYPE, Metrics

METRICS_PATH = "/metrics"


def install_metrics(app: FastAPI, metrics: Metrics, auth) -> None:
    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.http_requests.labels(request.method, template, str(status)).inc()
            metrics.http_duration.labels(request.method, template).observe(time.perf_counter() - started)

    router = APIRouter(dependencies=[Depends(auth)])

    @router.get(METRICS_PATH, summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def scrape() -> Response:
        # Gauges read Redis at scrape time: off the event loop.
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    app.include_router(router)
