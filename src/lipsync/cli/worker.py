"""``lipsync worker``: one GPU worker of a cluster. It loads the models first, then consumes jobs from the
Redis queue (LIPSYNC_REDIS_URL) and serves its own Prometheus metrics. Run one process per GPU."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import click

from lipsync.config import Settings
from lipsync.errors import InputError, LipSyncError
from lipsync.jobs.engine import PipelineFactory

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(cpu|cuda(:\d{1,2})?)$")


@click.command()
@click.option("--device", default=None, metavar="DEVICE",
              help="Torch device for this worker: cuda:N, cuda or cpu (default: LIPSYNC_DEVICE).")
@click.option("--queue", "queue", default=None, metavar="NAME",
              help="Queue to consume (default: LIPSYNC_QUEUE_NAME, 'lipsync').")
@click.option("--threads", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Jobs run at once in this process (one per GPU is the rule).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9108, show_default=True,
              help="Serve Prometheus /metrics on this port (0: off).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Interface for /metrics.")
def worker(device: str | None, queue: str | None, threads: int, metrics_port: int, metrics_host: str) -> None:
    """Consume lip-sync jobs from the Redis queue (needs LIPSYNC_REDIS_URL)."""
    if device is not None and not _DEVICE.match(device):
        raise click.BadParameter(f"{device!r} is not cpu, cuda or cuda:N", param_hint="--device")
    if queue is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", queue):
        raise click.BadParameter(f"{queue!r}: 1-64 letters, digits, '_', '.' or '-'", param_hint="--queue")
    if not Settings().redis_url:
        raise click.UsageError("lipsync worker needs LIPSYNC_REDIS_URL (redis://host:port/db)")
    run_worker(Settings(), device=device, queue=queue, threads=threads, metrics_port=metrics_port,
               metrics_host=metrics_host)


def _factory(device: str | None) -> PipelineFactory:
    from lipsync.jobs.engine import PipelineEngine, default_pipeline_factory

    if device is None:
        return default_pipeline_factory
    return lambda settings: PipelineEngine(settings, devices=[device])


def run_worker(settings: Settings, *, pipeline_factory: PipelineFactory | None = None, device: str | None = None,
               queue: str | None = None, threads: int = 1, metrics_port: int = 0, metrics_host: str = "127.0.0.1",
               worker_id: str | None = None, stop: threading.Event | None = None,
               on_ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Tests and benchmarks pass a fake engine factory."""
    from prometheus_client import start_http_server

    from lipsync.api.app import default_work_dir
    from lipsync.api.backend import webhook_sender
    from lipsync.api.fetch import Fetcher, FetchLimits
    from lipsync.api.upload import Uploader
    from lipsync.api.work import JobWork
    from lipsync.jobs.gate import ModelGate
    from lipsync.jobs.metrics import Metrics
    from lipsync.jobs.redis_queue import OnceWebhooks, make_broker, open_store
    from lipsync.jobs.redis_worker import RedisWorker
    from lipsync.jobs.results import results_store_from_url

    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = (pipeline_factory or _factory(device))(settings)
    gate = ModelGate(engine, preload=True)
    metrics = Metrics()
    metrics.watch(model_state=lambda: gate.state, models_loaded=engine.models_loaded)
    if metrics_port:
        try:
            start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        except OSError as exc:
            raise InputError(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}; pick another"
                             " --metrics-port (0: off)", field="--metrics-port") from None
        log.info("worker metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    log.info("loading models on %s", device or settings.device)
    # Before the first job: a worker that cannot load the lip-sync models takes none. A missing enhancer
    # only refuses the jobs that ask for enhancement (the gate reports it per job).
    gate.require(("insightface", "wav2lip"))
    with contextlib.suppress(LipSyncError):
        gate.require(("gfpgan",))

    work_dir = Path(settings.work_dir) if settings.work_dir else default_work_dir()
    limits = FetchLimits.from_settings(settings)
    fetcher = Fetcher(limits, allow_private=settings.allow_private_urls)
    shared = results_store_from_url(settings.results_url, endpoint_url=settings.s3_endpoint_url) \
        if settings.results_url else None
    work = JobWork(settings, engine, gate, fetcher, Uploader(limits, allow_private=settings.allow_private_urls),
                   work_dir / "results", results=shared)
    store = open_store(settings)
    node = RedisWorker(settings, store, make_broker(settings), work, scratch_dir=work_dir / "worker-tmp",
                       results=shared, webhooks=OnceWebhooks(store, webhook_sender(settings, fetcher)),
                       queue=queue, threads=threads, worker_id=worker_id)
    node.add_listener(metrics.observe_final)
    metrics.watch(running=lambda: node.running_jobs, queue_depth=lambda: store.count("queued"),
                  workers=store.workers_alive)

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    node.start()
    if on_ready is not None:
        on_ready()
    while not stop.wait(0.5):
        pass
    log.info("stopping: the running job may finish within %.0fs, else it is requeued",
             settings.worker_stop_grace_s)
    node.stop()
    store.close()
