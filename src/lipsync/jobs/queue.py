"""The one interface the API drives a job backend through, whichever it is: the embedded JobRunner
(SQLite + threads) or the cluster's RedisJobQueue (Dramatiq on Redis). Both implement these methods;
the routes use nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from lipsync.jobs.models import JobRecord

log = logging.getLogger(__name__)

Listener = Callable[[JobRecord], None]


class JobReader(Protocol):
    def get(self, job_id: str) -> JobRecord:
        """The job's record; raises JobNotFound."""

    def close(self) -> None: ...


class JobQueue(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def add_listener(self, fn: Listener) -> None:
        """``fn(record)`` once a job (one this node submitted or ran) reaches its final state."""

    def scratch_for(self, job_id: str) -> Path:
        """The local folder a submitter may fill with a job's inputs before ``submit``."""

    def submit(self, kind: str, params: dict[str, Any], *, webhook_url: str | None = None,
               job_id: str | None = None) -> JobRecord:
        """Queue a job; raises QueueFull (429) beyond the queue size."""

    def cancel(self, job_id: str) -> JobRecord: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running_jobs(self) -> int: ...


def notify_listeners(listeners: Iterable[Listener], record: JobRecord) -> None:
    """Call each listener; one that fails is logged and does not stop the others."""
    for fn in list(listeners):
        try:
            fn(record)
        except Exception:
            log.exception("job listener failed for %s", record.id)
