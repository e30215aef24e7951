"""The cluster's queue: Dramatiq on Redis, and the API node's side of it.

Why Dramatiq (over Celery and arq): a message is acknowledged only after the actor returns, and its
Redis broker keeps every fetched message in a per-worker set that other workers hand back to the queue
once that worker's heartbeat stops (the SIGKILL case), with no result backend or beat process to run.
Celery's Redis transport needs ``acks_late`` plus a visibility timeout that has to exceed the longest
job (a 2-hour video would wait 2 hours after a crash); arq has no per-worker heartbeat, only a job
timeout. Dramatiq's requeue works whatever the job's length.

The messages carry only a job id; RedisJobStore holds the truth. Delivery is at least once, so every
delivery goes through RedisJobStore.start, which decides atomically whether to run, skip or fail it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from lipsync.config import Settings
from lipsync.errors import LipSyncError, NoResultsStore, QueueUnavailable
from lipsync.jobs.models import JobFailure, JobRecord
from lipsync.jobs.queue import Listener, notify_listeners
from lipsync.jobs.redis_store import RedisJobStore, redis_client
from lipsync.jobs.results import ResultStore
from lipsync.jobs.webhooks import WebhookSender

log = logging.getLogger(__name__)

ACTOR_NAME = "lipsync_job"
LOCAL_INPUTS = "local"  # params["inputs"] of an upload job (the same marker as lipsync.api.work)

def make_broker(settings: Settings):
    """Dramatiq's Redis broker with our heartbeat and maintenance settings. The middleware is chosen:
    no TimeLimit (a long video is not a hung job) and a few Retries only for infrastructure failures
    (the actor records job failures itself and returns)."""
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import Retries

    if not settings.redis_url:
        raise QueueUnavailable("LIPSYNC_REDIS_URL is not set")
    return RedisBroker(
        client=redis_client(settings.redis_url, decode=False),
        namespace=f"{settings.redis_namespace}:dramatiq",
        heartbeat_timeout=int(settings.heartbeat_timeout_s * 1000),
        maintenance_chance=max(1, int(settings.maintenance_chance * 1_000_000)),
        middleware=[Retries(max_retries=10, min_backoff=1000, max_backoff=30000)],
    )


def make_actor(broker, queue: str, fn: Callable[[str], None] | None = None):
    """The one actor, ``lipsync_job(job_id)``. The API declares it only to send (its body never runs
    there)."""
    import dramatiq

    def not_here(job_id: str) -> None:
        raise RuntimeError("this process only sends jobs")

    return dramatiq.Actor(fn or not_here, broker=broker, actor_name=ACTOR_NAME, queue_name=queue, priority=0,
                          options={"max_retries": 10})


def failure_from(exc: BaseException) -> JobFailure:
    if isinstance(exc, LipSyncError):
        return JobFailure(code=exc.code, message=exc.message, http_status=exc.http_status, field=exc.field)
    return JobFailure(code="internal_error", http_status=500,
                      message="an internal error stopped this job; the server log has the details")


class OnceWebhooks:
    """One webhook per final state across the cluster: whoever claims the job's pending webhook in Redis
    sends it and marks it delivered. A later delivery of the same message (after a crash) finds it
    delivered and sends nothing; one that finds it still pending and unclaimed sends it."""

    def __init__(self, store: RedisJobStore, sender: WebhookSender) -> None:
        self.store = store
        self.sender = sender
        self.token = uuid.uuid4().hex
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")

    def deliver_now(self, record: JobRecord) -> None:
        if not record.webhook_url or not record.is_final:
            return
        if not self.store.claim_webhook(record.id, self.token):
            return
        outcome = "failed"
        try:
            status = self.sender.deliver(record)
            outcome = "delivered" if 0 < status < 500 else "failed"
        except LipSyncError as exc:
            log.warning("webhook for job %s not delivered: %s", record.id, exc.message)
        finally:
            self.store.webhook_done(record.id, outcome)

    def __call__(self, record: JobRecord) -> None:
        """Deliver in the background (API nodes: a slow receiver must not hold a request)."""
        self._pool.submit(self._logged, record)

    def _logged(self, record: JobRecord) -> None:
        try:
            self.deliver_now(record)
        except Exception:
            log.exception("webhook for job %s crashed", record.id)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the deliveries under way (at shutdown)."""
        self._pool.shutdown(wait=True, cancel_futures=False)


class EventListener:
    """A thread on the store's pub/sub channel: calls ``on_event(kind, job_id)`` for ``final``/``cancel``
    events, reconnecting after a Redis restart."""

    def __init__(self, client: redis.Redis, channel: str, on_event: Callable[[str, str], None],
                 on_reconnect: Callable[[], None] | None = None) -> None:
        self.client = client
        self.channel = channel
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="redis-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                if not first and self.on_reconnect is not None:
                    self.on_reconnect()  # events sent while we were away are gone: look again
                first = False
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        kind, _, job_id = str(msg["data"]).partition(" ")
                        self.on_event(kind, job_id)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("job events: Redis connection lost (%s); reconnecting", exc)
                self._stop.wait(0.5)
            except Exception:
                log.exception("job events listener failed; restarting it")
                self._stop.wait(0.5)
            finally:
                try:
                    pubsub.close()
                except Exception:  # the connection may already be gone
                    log.debug("pubsub close failed", exc_info=True)


class RedisJobQueue:
    """The API node's job runner in Redis mode: same methods the routes use on JobRunner (submit,
    cancel, scratch_for, queue_depth, running_jobs, add_listener). Listeners hear every job of this
    node's submissions reach a final state, wherever it ran (pub/sub, with a poll after reconnects)."""

    def __init__(self, store: RedisJobStore, actor: Any, *, queue_size: int, scratch_dir: Path,
                 results: ResultStore | None, webhooks: OnceWebhooks,
                 on_transition: Listener | None = None) -> None:
        self.store = store
        self.actor = actor
        self.queue_size = int(queue_size)
        self.scratch_dir = Path(scratch_dir)
        self.results = results
        self.webhooks = webhooks
        self.on_transition = on_transition
        self._listeners: list[Listener] = []
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._events = EventListener(store.r, store.channel, self._on_event, on_reconnect=self._sweep)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="redis-sweep", daemon=True)

    def start(self) -> None:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        self._events.start()
        self._sweeper.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._events.stop()
        self._sweeper.join(timeout)
        self.webhooks.join(timeout)

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def scratch_for(self, job_id: str) -> Path:
        return self.scratch_dir / job_id

    @property
    def queue_depth(self) -> int:
        return self.store.count("queued")

    @property
    def running_jobs(self) -> int:
        return self.store.count("running")

    def submit(self, kind: str, params: dict[str, Any], *, webhook_url: str | None = None,
               job_id: str | None = None) -> JobRecord:
        if not params.get("upload_url") and self.results is None:
            raise NoResultsStore(
                "this cluster has no shared results store (LIPSYNC_RESULTS_URL), so the result must go to"
                " upload_url; give a presigned PUT URL", field="upload_url")
        local = params.get("inputs") == LOCAL_INPUTS and job_id is not None
        if local and self.results is None:
            raise NoResultsStore(
                "uploaded files reach the workers through the shared results store, and this cluster has none"
                " (LIPSYNC_RESULTS_URL); send URLs instead", field="video")
        if local and self.results is not None and job_id is not None:
            # The worker runs elsewhere: the received files travel through the shared store.
            folder = self.scratch_for(job_id)
            self.results.put_inputs(job_id, sorted(p for p in folder.iterdir() if p.is_file()))
            shutil.rmtree(folder, ignore_errors=True)
        try:
            record = self.store.create(kind, params, webhook_url=webhook_url, max_queued=self.queue_size,
                                       job_id=job_id)
        except BaseException:
            if local and self.results is not None and job_id is not None:
                self.results.delete_inputs(job_id)
            raise
        with self._lock:
            self._pending.add(record.id)
        try:
            self.actor.send(record.id)
        except Exception as exc:
            self.store.delete(record.id)
            with self._lock:
                self._pending.discard(record.id)
            raise QueueUnavailable(f"the job could not be queued (Redis): {exc}") from None
        return record

    def cancel(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record.is_final:
            return record
        failure = JobFailure(code="cancelled", message="the job was cancelled by request", http_status=409)
        finished = self.store.finish(job_id, "cancelled", error=failure)
        if finished is None:
            return self.store.get(job_id)
        # This node made the transition: it owns the webhook and the metrics of it. The pub/sub event
        # reaches the worker that runs the job (it stops at its next progress report).
        if self.on_transition is not None:
            self.on_transition(finished)
        self.webhooks(finished)
        return finished

    # --- final events -------------------------------------------------------------------------------

    def _on_event(self, kind: str, job_id: str) -> None:
        if kind != "final":
            return
        with self._lock:
            if job_id not in self._pending:
                return
            self._pending.discard(job_id)
        self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        try:
            record = self.store.get(job_id)
        except LipSyncError:
            return
        notify_listeners(self._listeners, record)

    def _sweep(self) -> None:
        """Look at this node's unfinished jobs directly (after a lost pub/sub connection)."""
        with self._lock:
            pending = list(self._pending)
        for job_id in pending:
            try:
                status = self.store.status(job_id)
            except redis.RedisError:
                return
            if status is None or status in ("succeeded", "failed", "cancelled"):
                with self._lock:
                    if job_id not in self._pending:
                        continue
                    self._pending.discard(job_id)
                self._notify(job_id)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                self._sweep()
            except Exception:
                log.exception("job sweep failed")


def open_store(settings: Settings) -> RedisJobStore:
    if not settings.redis_url:
        raise QueueUnavailable("LIPSYNC_REDIS_URL is not set")
    return RedisJobStore(redis_client(settings.redis_url), namespace=settings.redis_namespace,
                         job_ttl_s=settings.job_ttl_s)
