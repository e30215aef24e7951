"""A worker of the cluster: consumes ``lipsync_job`` messages from Redis (a Dramatiq worker) and runs the
same work function as the embedded runner.

Every delivery asks the store what to do (RedisJobStore.start): a job another live worker runs is looked
at again later; one whose worker died is taken over (``attempts`` + 1) until it has killed
``worker_lost_after`` workers, then it fails ``worker_lost``. The message is acknowledged only when the
job's outcome (and its webhook) is recorded, so a worker killed at any point leaves the message for
another one (Dramatiq requeues a dead worker's messages once its heartbeat stops).

SIGTERM (``stop``): no new job is taken; the running one may finish within the grace period, else it is
interrupted at its next progress report, put back in the queue (its attempt refunded) and re-sent.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lipsync.config import Settings
from lipsync.errors import JobCancelled, LipSyncError
from lipsync.jobs.models import JobFailure, JobRecord
from lipsync.jobs.queue import Listener, notify_listeners
from lipsync.jobs.redis_queue import LOCAL_INPUTS, EventListener, OnceWebhooks, failure_from, make_actor
from lipsync.jobs.redis_store import RedisJobStore
from lipsync.jobs.results import ResultStore
from lipsync.jobs.runner import JobContext, WorkFn

log = logging.getLogger(__name__)

class _Shutdown(JobCancelled):
    code = "shutdown"


class _Superseded(JobCancelled):
    """Another worker took the job over (this one was presumed dead): stop and leave it alone."""

    code = "superseded"


class _Running:
    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.cancel = threading.Event()


class RedisWorker:
    def __init__(self, settings: Settings, store: RedisJobStore, broker: Any, work: WorkFn, *,
                 scratch_dir: Path, results: ResultStore | None, webhooks: OnceWebhooks, queue: str | None = None,
                 threads: int = 1, progress_interval_s: float = 0.25, worker_id: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.work = work
        self.scratch_dir = Path(scratch_dir)
        self.results = results
        self.webhooks = webhooks
        self.queue = queue or settings.queue_name
        self.threads = max(1, int(threads))
        self.progress_interval_s = progress_interval_s
        self.id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self.actor = make_actor(broker, self.queue, self._handle)
        self._listeners: list[Listener] = []
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._interrupt = threading.Event()  # set when the grace period of a stop is over
        self._stop = threading.Event()
        self._events = EventListener(store.r, store.channel, self._on_event)
        self._beat = threading.Thread(target=self._beat_loop, name="worker-heartbeat", daemon=True)
        self._dramatiq = None

    # --- lifecycle ----------------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        """``fn(record)`` for each final state this worker recorded (metrics)."""
        self._listeners.append(fn)

    @property
    def running_jobs(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        from dramatiq import Worker

        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._heartbeat_once()
        self._beat.start()
        self._events.start()
        # worker_timeout caps Dramatiq's idle polling backoff: 100 ms keeps the latency the queue adds to a
        # job low, for about 20 cheap Redis calls a second per idle worker.
        worker = Worker(self.broker, queues=[self.queue], worker_threads=self.threads, worker_timeout=100)
        # One message per thread: a prefetched job would wait behind a long one here while another
        # worker idles.
        worker.queue_prefetch = self.threads
        worker.start()
        self._dramatiq = worker
        log.info("worker %s consuming queue %r (%d thread(s))", self.id, self.queue, self.threads)

    def stop(self, grace_s: float | None = None) -> None:
        grace = self.settings.worker_stop_grace_s if grace_s is None else grace_s
        timer = threading.Timer(grace, self._interrupt.set)
        timer.daemon = True
        timer.start()
        if self._dramatiq is not None:
            # Stops the worker threads after their current message; the consumers keep heartbeating
            # meanwhile, and messages fetched but not started go back to the queue.
            self._dramatiq.stop(timeout=int((grace + 120) * 1000))
        timer.cancel()
        self._stop.set()
        self._events.stop()
        self._beat.join(3)
        try:
            self.store.forget_worker(self.id)
        except Exception:
            log.warning("could not remove worker %s's liveness key", self.id)
        log.info("worker %s stopped", self.id)

    def _heartbeat_once(self) -> None:
        # Shorter than Dramatiq's heartbeat timeout: by the time the broker hands a dead worker's message
        # to another, this key is gone too and the job is taken over rather than deferred.
        self.store.heartbeat(self.id, self.settings.heartbeat_timeout_s * 0.8)

    def _beat_loop(self) -> None:
        interval = max(0.1, self.settings.heartbeat_timeout_s / 8)
        while not self._stop.wait(interval):
            try:
                self._heartbeat_once()
            except Exception as exc:  # Redis restarting: keep trying
                log.warning("worker heartbeat failed: %s", exc)

    def _on_event(self, kind: str, job_id: str) -> None:
        if kind == "cancel":
            with self._lock:
                running = self._running.get(job_id)
            if running is not None:
                running.cancel.set()

    # --- one delivery -------------------------------------------------------------------------------

    def _handle(self, job_id: str) -> None:
        outcome = self.store.start(job_id, self.id, lost_after=self.settings.worker_lost_after)
        if outcome.state == "missing":
            log.warning("job %s: no record (expired or deleted); message dropped", job_id)
            return
        if outcome.state == "busy":
            # A live worker runs it (this is a duplicate delivery): look again after a heartbeat period.
            delay = int(self.settings.heartbeat_timeout_s * 1000)
            self.actor.send_with_options(args=(job_id,), delay=delay)
            return
        record = self.store.get(job_id)
        if outcome.state == "lost":
            log.warning("job %s failed worker_lost after %d attempts", job_id, outcome.attempts)
            self._notify(record)
        if outcome.state in ("final", "lost"):
            self._finished(record)
            return
        if outcome.attempts > 1:
            log.warning("job %s: attempt %d (a previous worker died)", job_id, outcome.attempts)
        self._run(record)

    def _finished(self, record: JobRecord) -> None:
        """Before the ack: the final state's webhook (once), and the upload job's stored inputs."""
        self.webhooks.deliver_now(record)
        if record.params.get("inputs") == LOCAL_INPUTS and self.results is not None:
            self.results.delete_inputs(record.id)

    def _progress_fn(self, running: _Running, stop_check: Callable[[], None]):
        last = {"stage": None, "t": 0.0}
        job_id = running.record.id

        def progress(stage: str, done: int, total: int) -> None:
            stop_check()
            now = time.monotonic()
            if stage != last["stage"] or done >= total or now - last["t"] >= self.progress_interval_s:
                last["stage"], last["t"] = stage, now
                # The write also reads the status back: a cancel is seen here even if its pub/sub
                # message was missed.
                status = self.store.set_progress(job_id, self.id, stage, done, total)
                if status == "superseded":
                    raise _Superseded("another worker took this job over")
                if status != "running":
                    running.cancel.set()
                    stop_check()

        return progress

    def _stop_check(self, running: _Running) -> Callable[[], None]:
        def check() -> None:
            if running.cancel.is_set():
                raise JobCancelled("the job was cancelled")
            if self._interrupt.is_set():
                raise _Shutdown("the worker is stopping")

        return check

    def _run(self, record: JobRecord) -> None:
        running = _Running(record)
        with self._lock:
            self._running[record.id] = running
        workdir = self.scratch_dir / record.id
        final: JobRecord | None = None
        stop_check = self._stop_check(running)
        try:
            shutil.rmtree(workdir, ignore_errors=True)  # a previous attempt's leftovers
            workdir.mkdir(parents=True)
            if record.params.get("inputs") == LOCAL_INPUTS and self.results is not None:
                self.results.fetch_inputs(record.id, workdir)
            ctx = JobContext(job=record, workdir=workdir, progress=self._progress_fn(running, stop_check),
                             cancel_event=running.cancel, stop_check=stop_check)
            result = self.work(record, ctx)
            final = self.store.finish(record.id, "succeeded", result=result, only_if=("running",), owner=self.id)
        except _Shutdown:
            if self.store.requeue(record.id, self.id):
                self.actor.send(record.id)
                log.info("job %s interrupted by the worker's stop; requeued", record.id)
            return
        except _Superseded:
            log.warning("job %s was taken over by another worker; this run is dropped", record.id)
            return
        except JobCancelled:
            failure = JobFailure(code="cancelled", message="the job was cancelled by request", http_status=409)
            final = self.store.finish(record.id, "cancelled", error=failure, only_if=("running",), owner=self.id)
        except Exception as exc:
            if not isinstance(exc, LipSyncError):
                log.exception("job %s crashed", record.id)
            final = self.store.finish(record.id, "failed", error=failure_from(exc), only_if=("running",),
                                      owner=self.id)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                self._running.pop(record.id, None)
        if final is not None:
            self._notify(final)
        current = final or self.store.get(record.id)
        if current.is_final:
            self._finished(current)

    def _notify(self, record: JobRecord) -> None:
        notify_listeners(self._listeners, record)
