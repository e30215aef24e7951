"""GET /jobs/{id}/events: a job's progress as server-sent events, until it ends.

The stream reads the job store (the one truth for any API node), so it works for jobs run by any worker.
It polls at a short interval rather than hooking into the runner: a record changes at most a few times a
second, and a poll costs one indexed read. Each change is one ``progress`` event; the last event is
``end`` with the job's public JSON. A comment line every few seconds keeps proxies from closing an idle
stream. When the client goes away, Starlette cancels the generator: nothing is left running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from lipsync.jobs.models import JobRecord

log = logging.getLogger(__name__)

POLL_S = 0.2
KEEPALIVE_S = 10.0


class StreamCounter:
    """How many event streams are open (for /health-style introspection and the tests)."""

    def __init__(self) -> None:
        self.open = 0


def _event(name: str, data: dict[str, Any], event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _snapshot(record: JobRecord) -> dict[str, Any]:
    stage = record.stage
    progress = record.progress.get(stage) if stage else None
    return {
        "status": record.status,
        "stage": stage,
        "done": progress.done if progress else 0,
        "total": progress.total if progress else 0,
        "attempts": record.attempts,
        # Every stage so far: a stage shorter than a poll (a quick download) is still reported.
        "progress": {k: {"done": v.done, "total": v.total} for k, v in record.progress.items()},
    }


async def job_events(
    job_id: str, get: Callable[[str], JobRecord], view: Callable[[JobRecord], dict[str, Any]],
    counter: StreamCounter,
) -> AsyncIterator[bytes]:  # fmt: skip
    counter.open += 1
    try:
        event_id = 0
        last: dict[str, Any] | None = None
        last_sent = time.monotonic()
        yield b"retry: 2000\n\n"
        while True:
            record = await run_in_threadpool(get, job_id)
            snapshot = _snapshot(record)
            if snapshot != last:
                event_id += 1
                yield _event("progress", snapshot, event_id)
                last, last_sent = snapshot, time.monotonic()
            if record.is_final:
                event_id += 1
                yield _event("end", view(record), event_id)
                return
            if time.monotonic() - last_sent > KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(POLL_S)
    finally:
        counter.open -= 1


def events_response(stream: AsyncIterator[bytes]) -> StreamingResponse:
    # no-transform and X-Accel-Buffering: proxies must pass each event on as it comes.
    headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
