"""Prometheus metrics of an API node or a worker (prometheus_client), one registry per process part.

Names follow Prometheus' conventions: a ``lipsync_`` prefix, base units (seconds, bytes), ``_total``
on counters. Job metrics are counted where a job's final state is recorded (the worker that ran it, or
the API node that cancelled it), so summing over the cluster counts each job once. The README lists
every metric.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lipsync.jobs.models import JobRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODEL_STATES = ("idle", "loading", "ready", "failed")

# Jobs run from seconds to hours: buckets up to 2 h.
DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StateCollector(Collector):
    """Values read at scrape time: model state, loaded models, GPU memory (only where torch is already
    imported: an API-only node never loads it for a scrape)."""

    def __init__(self) -> None:
        self.model_state: Callable[[], str] | None = None
        self.models_loaded: Callable[[], dict[str, bool]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.model_state is not None:
            state = self.model_state()
            fam = GaugeMetricFamily("lipsync_model_state", "1 for the models' current loading state",
                                    labels=["state"])
            for name in MODEL_STATES:
                fam.add_metric([name], 1.0 if name == state else 0.0)
            yield fam
        if self.models_loaded is not None:
            fam = GaugeMetricFamily("lipsync_model_loaded", "1 when the model is loaded", labels=["model"])
            for name, loaded in sorted(self.models_loaded().items()):
                fam.add_metric([name], 1.0 if loaded else 0.0)
            yield fam
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            used = GaugeMetricFamily("lipsync_gpu_memory_used_bytes", "GPU memory held by tensors",
                                     labels=["device"])
            reserved = GaugeMetricFamily("lipsync_gpu_memory_reserved_bytes",
                                         "GPU memory reserved by the caching allocator", labels=["device"])
            for i in range(torch.cuda.device_count()):
                used.add_metric([f"cuda:{i}"], float(torch.cuda.memory_allocated(i)))
                reserved.add_metric([f"cuda:{i}"], float(torch.cuda.memory_reserved(i)))
            yield used
            yield reserved


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("lipsync_http_requests", "HTTP requests answered",
                                     ["method", "route", "status"], registry=r)
        self.http_duration = Histogram("lipsync_http_request_duration_seconds", "HTTP request handling time",
                                       ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.jobs = Counter("lipsync_jobs", "Jobs that reached a final status here", ["kind", "status"],
                            registry=r)
        self.job_duration = Histogram("lipsync_job_duration_seconds", "Run time of jobs, start to final state",
                                      ["kind", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("lipsync_job_queue_wait_seconds", "Time jobs waited, creation to start",
                                    ["kind"], buckets=WAIT_BUCKETS, registry=r)
        self.frames = Counter("lipsync_frames_rendered", "Output frames of succeeded jobs", ["kind"], registry=r)
        self.running = Gauge("lipsync_running_jobs", "Jobs running (this process; cluster-wide on API nodes)",
                             registry=r)
        self.queue_depth = Gauge("lipsync_queue_depth", "Jobs waiting in the queue", registry=r)
        self.workers = Gauge("lipsync_workers_alive", "Workers with a live heartbeat (Redis mode)", registry=r)
        self._state = _StateCollector()
        r.register(self._state)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes...

    def watch(self, *, running: Callable[[], float] | None = None, queue_depth: Callable[[], float] | None = None,
              workers: Callable[[], float] | None = None, model_state: Callable[[], str] | None = None,
              models_loaded: Callable[[], dict[str, bool]] | None = None) -> None:
        """Values read at each scrape."""
        for gauge, fn in ((self.running, running), (self.queue_depth, queue_depth), (self.workers, workers)):
            if fn is not None:
                gauge.set_function(_safe(fn))
        if model_state is not None:
            self._state.model_state = model_state
        if models_loaded is not None:
            self._state.models_loaded = models_loaded

    def observe_final(self, record: JobRecord) -> None:
        """A job's final state was recorded here (a runner/worker listener)."""
        self.jobs.labels(record.kind, record.status).inc()
        if record.started_at is not None:
            self.queue_wait.labels(record.kind).observe(max(0.0, record.started_at - record.created_at))
            if record.finished_at is not None:
                self.job_duration.labels(record.kind, record.status).observe(
                    max(0.0, record.finished_at - record.started_at))
        frames = ((record.result or {}).get("stats") or {}).get("frames")
        if record.status == "succeeded" and isinstance(frames, int | float) and frames > 0:
            self.frames.labels(record.kind).inc(frames)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _safe(fn: Callable[[], float]) -> Callable[[], float]:
    # A scrape must not fail because Redis is restarting: report NaN for that value.
    def read() -> float:
        try:
            return float(fn())
        except Exception:
            return float("nan")

    return read
