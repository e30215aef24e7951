"""The job backend behind the API: embedded (SQLite + worker threads, the default) or a cluster on Redis
(LIPSYNC_REDIS_URL: Dramatiq queue, records in Redis, optional in-process workers).

Both give the routes the same two objects: ``store`` (``get``) and ``runner`` (``submit``, ``cancel``,
``scratch_for``, ``queue_depth``, ``running_jobs``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipsync.api.fetch import Fetcher
from lipsync.api.netguard import check_url
from lipsync.api.routes import job_view
from lipsync.api.watch import TransferWatch
from lipsync.config import Settings
from lipsync.errors import FetchTimeout, NotReady
from lipsync.jobs.gate import ModelGate
from lipsync.jobs.metrics import Metrics
from lipsync.jobs.queue import JobQueue, JobReader
from lipsync.jobs.retention import RetentionSweeper
from lipsync.jobs.runner import JobRunner, WorkFn
from lipsync.jobs.store import JobStore
from lipsync.jobs.webhooks import WebhookSender

log = logging.getLogger(__name__)


def webhook_sender(settings: Settings, fetcher: Fetcher, outbox: JobStore | None = None) -> WebhookSender:
    """Webhooks go through the same SSRF-guarded client as downloads, each attempt under a deadline; the
    body is the job's public view. ``outbox``: the SQLite store that records what is owed (embedded mode;
    the Redis backend claims each webhook once in Redis instead)."""
    return WebhookSender(
        secret=settings.webhook_secret,
        payload=lambda record: {"job_id": record.id, **job_view(record)},
        client_factory=lambda deadline: fetcher.client(TransferWatch(
            deadline, lambda: FetchTimeout("webhook_url: the receiver did not answer in time", field="webhook_url"))),
        guard=lambda url: check_url(url, allow_private=settings.allow_private_urls, field="webhook_url"),
        outbox=outbox,
    )


class RemoteEngine:
    """The engine of an API-only node (``lipsync serve --no-workers``): the models live on the workers."""

    def load_model(self, name: str) -> None:
        raise NotReady("this node runs no workers (--no-workers); jobs run on `lipsync worker` processes")

    def models_loaded(self) -> dict[str, bool]:
        return {"insightface": False, "wav2lip": False, "gfpgan": False}

    def device_info(self) -> dict[str, Any]:
        return {"gpu_available": False, "gpu_name": None, "gpu_memory_gb": None, "gpu_count": 0}

    def lipsync(self, request, progress):
        raise NotReady("this node runs no workers")

    def face_tracking(self, request, progress):
        raise NotReady("this node runs no workers")


@dataclass
class JobBackend:
    store: JobReader
    runner: JobQueue
    worker: Any = None
    webhooks: Any = None
    sweeper: RetentionSweeper | None = None

    def start(self) -> None:
        self.runner.start()  # embedded: recovers first; jobs it fails are owed their webhook, sent by resume()
        if isinstance(self.webhooks, WebhookSender):
            self.webhooks.resume()
        if self.worker is not None:
            self.worker.start()
        if self.sweeper is not None:
            self.sweeper.start()

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.worker is not None:
            self.worker.stop()
        self.runner.stop()
        if self.webhooks is not None:
            self.webhooks.join()
        self.store.close()


def build_backend(settings: Settings, work: WorkFn, *, fetcher: Fetcher, waiters, metrics: Metrics,
                  gate: ModelGate, work_dir: Path, db_path: Path, workers: int) -> JobBackend:
    if settings.redis_url:
        return _redis_backend(settings, work, sender=webhook_sender(settings, fetcher), waiters=waiters,
                              metrics=metrics, gate=gate, work_dir=work_dir, workers=workers)
    store = JobStore(db_path)
    sender = webhook_sender(settings, fetcher, outbox=store)
    runner = JobRunner(store, work, scratch_dir=work_dir / "tmp", workers=workers, queue_size=settings.queue_size)
    runner.add_listener(waiters)
    runner.add_listener(sender)
    runner.add_listener(metrics.observe_final)
    metrics.watch(running=lambda: runner.running_jobs, queue_depth=lambda: runner.queue_depth,
                  model_state=lambda: gate.state)
    sweeper = RetentionSweeper(store, Path(work.results_dir), result_ttl_s=settings.result_retention_s,
                               row_ttl_s=settings.job_retention_s, interval_s=settings.retention_sweep_s)
    return JobBackend(store, runner, webhooks=sender, sweeper=sweeper)


def _redis_backend(settings: Settings, work: WorkFn, *, sender: WebhookSender, waiters, metrics: Metrics,
                   gate: ModelGate, work_dir: Path, workers: int) -> JobBackend:
    from lipsync.jobs.redis_queue import OnceWebhooks, RedisJobQueue, make_actor, make_broker, open_store
    from lipsync.jobs.redis_worker import RedisWorker

    store = open_store(settings)
    broker = make_broker(settings)
    results = getattr(work, "results", None) if settings.results_url else None
    once = OnceWebhooks(store, sender)
    worker = None
    if settings.run_workers:
        worker = RedisWorker(settings, store, broker, work, scratch_dir=work_dir / "worker-tmp", results=results,
                             webhooks=once, threads=workers)
        worker.add_listener(metrics.observe_final)
        actor = worker.actor
    else:
        actor = make_actor(broker, settings.queue_name)
    queue = RedisJobQueue(store, actor, queue_size=settings.queue_size, scratch_dir=work_dir / "tmp",
                          results=results, webhooks=once, on_transition=metrics.observe_final)
    queue.add_listener(waiters)
    metrics.watch(running=lambda: queue.running_jobs, queue_depth=lambda: queue.queue_depth,
                  workers=store.workers_alive, model_state=(lambda: gate.state) if settings.run_workers else None)
    log.info("jobs on Redis %s (queue %r, %s)", settings.redis_url.split("@")[-1], settings.queue_name,
             f"{workers} in-process worker thread(s)" if worker else "no workers on this node")
    return JobBackend(store, queue, worker=worker, webhooks=once)
