"""The worker pool: takes queued jobs from the store and runs an injected work function on them.

The runner knows nothing about lip-sync: ``work(job, ctx) -> result dict`` is given to it (the API
composes download + pipeline + upload into one). That seam is what lets the tests drive the whole
server with a fast fake.

Admission is bounded (the store refuses beyond ``queue_size`` waiting jobs); the in-memory queue only
carries ids, the store is the truth, so a restart re-reads it.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync.errors import JobCancelled, LipSyncError
from lipsync.jobs.models import JobFailure, JobRecord
from lipsync.jobs.queue import notify_listeners
from lipsync.jobs.store import JobStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
Listener = Callable[[JobRecord], None]

_STOP = object()


class _Shutdown(JobCancelled):
    """Raised inside a job when the server stops: the job goes back to the queue, it did nothing wrong."""

    code = "shutdown"


@dataclass
class JobContext:
    """What a work function gets besides the job: a private scratch folder (deleted afterwards, always)
    and a progress callback that also delivers cancellation (it raises JobCancelled)."""

    job: JobRecord
    workdir: Path
    progress: ProgressFn
    cancel_event: threading.Event = field(default_factory=threading.Event)
    stop_check: Callable[[], None] | None = None

    def check_cancelled(self) -> None:
        """Raise when the job should stop (cancelled, or the server is stopping)."""
        if self.stop_check is not None:
            self.stop_check()
        elif self.cancel_event.is_set():
            raise JobCancelled("the job was cancelled")


WorkFn = Callable[[JobRecord, JobContext], dict[str, Any]]


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        work: WorkFn,
        *,
        scratch_dir: Path,
        workers: int = 1,
        queue_size: int = 100,
        progress_interval_s: float = 0.25,
    ) -> None:
        self.store = store
        self.work = work
        self.scratch_dir = Path(scratch_dir)
        self.workers = max(1, int(workers))
        self.queue_size = int(queue_size)
        self.progress_interval_s = progress_interval_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._shutdown_requested: set[str] = set()
        self._listeners: list[Listener] = []
        self._stopping = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self.store.recover()
        queued = self.store.queued_ids()
        # Leftovers of a crashed or stopped run go, except the folders of jobs that will still run: those
        # may hold uploaded inputs that exist nowhere else.
        keep = set(queued)
        for child in self.scratch_dir.iterdir():
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
        for job_id in queued:
            self._queue.put(job_id)
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"lipsync-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("job runner started: %d worker(s), queue size %d", self.workers, self.queue_size)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones are interrupted at their next progress report and requeued."""
        self._stopping.set()
        with self._lock:
            for job_id, event in self._running.items():
                self._shutdown_requested.add(job_id)
                event.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def add_listener(self, fn: Listener) -> None:
        """``fn(record)`` is called once per job when it reaches a final status (from a worker thread)."""
        self._listeners.append(fn)

    # --- API ----------------------------------------------------------------------------------------

    def scratch_for(self, job_id: str) -> Path:
        """The job's private scratch folder. A submitter may fill it before ``submit`` (uploaded inputs,
        under an id from ``new_job_id``); the runner deletes it when the job ends, however it ends."""
        return self.scratch_dir / job_id

    def submit(self, kind: str, params: dict[str, Any], *, webhook_url: str | None = None,
               job_id: str | None = None) -> JobRecord:
        record = self.store.create(kind, params, webhook_url=webhook_url, max_queued=self.queue_size,
                                   job_id=job_id)
        self._queue.put(record.id)
        return record

    def cancel(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record.is_final:
            return record
        failure = JobFailure(code="cancelled", message="the job was cancelled by request", http_status=409)
        finished = self.store.finish(job_id, "cancelled", error=failure)
        with self._lock:
            event = self._running.get(job_id)
        if event is not None:
            event.set()  # the work stops at its next progress report; its result is discarded
        if finished is not None:
            self._notify(finished)
            return finished
        return self.store.get(job_id)

    @property
    def running_jobs(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def queue_depth(self) -> int:
        return self.store.count("queued")

    # --- workers ------------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._stopping.is_set():
                return
            job_id = str(item)
            try:
                record = self.store.mark_running(job_id)
            except Exception:  # a store failure must not kill the worker
                log.exception("could not start job %s", job_id)
                continue
            if record is None:  # cancelled while it waited
                # Its scratch may already hold uploaded inputs (see scratch_for); nothing else will run it.
                shutil.rmtree(self.scratch_for(job_id), ignore_errors=True)
                continue
            try:
                self._run(record)
            except Exception:  # bookkeeping failed (e.g. the store closed at shutdown); keep the worker
                log.exception("job %s: runner bookkeeping failed", job_id)

    def _make_stop_check(self, record: JobRecord, event: threading.Event) -> Callable[[], None]:
        def stop_check() -> None:
            if event.is_set():
                if record.id in self._shutdown_requested:
                    raise _Shutdown("the server is stopping")
                raise JobCancelled("the job was cancelled")

        return stop_check

    def _make_progress(self, record: JobRecord, stop_check: Callable[[], None]) -> ProgressFn:
        last = {"stage": None, "t": 0.0}

        def progress(stage: str, done: int, total: int) -> None:
            stop_check()
            now = time.monotonic()
            # Throttled: the pipeline may report every frame, the database needs a few writes a second.
            if stage != last["stage"] or done >= total or now - last["t"] >= self.progress_interval_s:
                last["stage"], last["t"] = stage, now
                self.store.set_progress(record.id, stage, done, total)

        return progress

    def _run(self, record: JobRecord) -> None:
        event = threading.Event()
        with self._lock:
            self._running[record.id] = event
        workdir = self.scratch_for(record.id)
        workdir.mkdir(parents=True, exist_ok=True)
        stop_check = self._make_stop_check(record, event)
        ctx = JobContext(job=record, workdir=workdir, progress=self._make_progress(record, stop_check),
                         cancel_event=event, stop_check=stop_check)
        started = time.monotonic()
        final: JobRecord | None = None
        requeued = False
        try:
            result = self.work(record, ctx)
            if event.is_set() and record.id in self._shutdown_requested:
                raise _Shutdown("the server is stopping")
            final = self.store.finish(record.id, "succeeded", result=result, only_if=("running",))
        except _Shutdown:
            self.store.requeue(record.id, refund_attempt=True)
            requeued = True
            log.info("job %s interrupted by shutdown; requeued", record.id)
        except JobCancelled:
            failure = JobFailure(code="cancelled", message="the job was cancelled by request", http_status=409)
            final = self.store.finish(record.id, "cancelled", error=failure, only_if=("running",))
        except LipSyncError as exc:
            failure = JobFailure(code=exc.code, message=exc.message, http_status=exc.http_status, field=exc.field)
            log.info("job %s failed: %s (%s)", record.id, exc.code, exc.message)
            final = self.store.finish(record.id, "failed", error=failure, only_if=("running",))
        except Exception:
            log.exception("job %s crashed", record.id)
            failure = JobFailure(
                code="internal_error",
                message="an internal error stopped this job; the server log has the details",
                http_status=500,
            )
            final = self.store.finish(record.id, "failed", error=failure, only_if=("running",))
        finally:
            if not requeued:  # a requeued job runs again after the restart and needs its uploaded inputs
                shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                self._running.pop(record.id, None)
                self._shutdown_requested.discard(record.id)
        log.info("job %s done in %.2fs", record.id, time.monotonic() - started)
        if final is not None:
            self._notify(final)

    def _notify(self, record: JobRecord) -> None:
        notify_listeners(self._listeners, record)
