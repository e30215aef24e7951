"""The engine seam: what the job layer needs from the models, and nothing more.

``Engine`` is a small protocol; ``PipelineEngine`` implements it on top of lipsync.pipeline and
lipsync.faces. The API takes a ``pipeline_factory(settings) -> Engine`` so tests (and the benchmark)
can run the whole server on a fast fake while the real one runs the networks.

``ModelGate`` tracks whether the models are loaded: with PRELOAD_MODELS they load in the background at
startup and requests get 503 until then; without, they load on first use inside a job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lipsync.config import Settings
from lipsync.errors import LipSyncError, NotReady
from lipsync.request import LipSyncRequest, TrackingRequest

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EngineOutput:
    """``duration`` in seconds of the written video; ``stats`` JSON-friendly; ``extra`` kind-specific
    (the tracks JSON for face tracking)."""

    out: Path
    duration: float
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    def load(self) -> None:
        """Load every model; idempotent; raises a ModelError subclass when one is unavailable."""

    def models_loaded(self) -> dict[str, bool]:
        """{'insightface': bool, 'wav2lip': bool, 'gfpgan': bool}."""

    def device_info(self) -> dict[str, Any]:
        """{'gpu_available': bool, 'gpu_name': str|None, 'gpu_memory_gb': float|None, 'gpu_count': int}."""

    def lipsync(self, request: LipSyncRequest, progress: ProgressFn) -> EngineOutput: ...

    def face_tracking(self, request: TrackingRequest, progress: ProgressFn) -> EngineOutput: ...


PipelineFactory = Callable[[Settings], Engine]


def torch_device_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu_available": False, "gpu_name": None, "gpu_memory_gb": None, "gpu_count": 0}
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu_available": True,
        "gpu_name": props.name,
        "gpu_memory_gb": round(props.total_memory / 1024**3, 1),
        "gpu_count": torch.cuda.device_count(),
    }


class ModelGate:
    """Loading state of the engine's models: 'idle' (lazy, not loaded yet), 'loading', 'ready', 'failed'."""

    def __init__(self, engine: Engine, *, preload: bool) -> None:
        self.engine = engine
        self.preload = preload
        self.state = "idle"
        self.error: LipSyncError | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.preload:
            self.state = "loading"
            self._thread = threading.Thread(target=self._load_logged, name="model-preload", daemon=True)
            self._thread.start()

    def _load_logged(self) -> None:
        try:
            self.ensure_loaded()
        except Exception:  # the state says what failed; a background thread has nowhere else to raise
            log.exception("model preload failed")

    def ensure_loaded(self) -> None:
        """Load now (first-use path, serialised). Raises the load error."""
        with self._lock:
            if self.state == "ready":
                return
            self.state = "loading"
            try:
                self.engine.load()
            except LipSyncError as exc:
                self.state, self.error = "failed", exc
                raise
            except Exception as exc:
                self.state = "failed"
                self.error = NotReady(f"models failed to load: {type(exc).__name__}: {exc}")
                raise self.error from exc
            self.state, self.error = "ready", None

    def check_accepting(self) -> None:
        """Raise 503 while preloading or after a failed load; lazy mode accepts before loading."""
        if self.state == "loading" and self.preload:
            raise NotReady("the models are still loading; retry in a moment")
        if self.state == "failed":
            err = self.error or NotReady("the models failed to load")
            exc = NotReady(f"the models are not available: {err.message}")
            exc.code = getattr(err, "code", "not_ready")
            raise exc


def engine_devices(settings: Settings) -> list[str]:
    """The torch devices the server spreads jobs over: every visible GPU when the device setting allows
    CUDA and several are present, else the one device the setting names."""
    import torch

    if settings.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [settings.device]


class PipelineEngine:
    """The real engine: lipsync.pipeline for lip-sync, its tracker plus lipsync.faces' renderer for
    /face-tracking. One pipeline (one copy of the torch models) per device, shared by that device's
    workers; each job goes to the least busy device. The face backend is shared by all of them."""

    def __init__(self, settings: Settings, *, devices: list[str] | None = None, **pipeline_kwargs: Any) -> None:
        from lipsync.pipeline import LipSyncPipeline

        self.settings = settings
        self.devices = devices or engine_devices(settings)
        first = LipSyncPipeline(settings, device=self.devices[0], **pipeline_kwargs)
        shared = {**pipeline_kwargs, "store": first.store}
        self.pipelines = [first] + [
            LipSyncPipeline(settings, device=device, **shared) for device in self.devices[1:]
        ]
        self._active = [0] * len(self.pipelines)
        self._busy_lock = threading.Lock()

    @property
    def pipeline(self):
        """The first device's pipeline (tracking-only work uses it)."""
        return self.pipelines[0]

    @contextmanager
    def acquire(self) -> Iterator[Any]:
        """The least busy device's pipeline, counted busy until the block ends."""
        with self._busy_lock:
            index = min(range(len(self.pipelines)), key=self._active.__getitem__)
            self._active[index] += 1
        try:
            yield self.pipelines[index]
        finally:
            with self._busy_lock:
                self._active[index] -= 1

    def load(self) -> None:
        first = self.pipelines[0]
        first.load_models(enhance=True)
        for other in self.pipelines[1:]:
            # Face analysis runs on onnxruntime, not torch: one backend serves every device's pipeline.
            other.share_face_backend(first.get_face_backend())
            other.load_models(enhance=True)

    def models_loaded(self) -> dict[str, bool]:
        return {
            "insightface": all(p.face_backend_loaded for p in self.pipelines),
            "wav2lip": all(p.generator_loaded for p in self.pipelines),
            "gfpgan": all(p.enhancer_loaded for p in self.pipelines),
        }

    def device_info(self) -> dict[str, Any]:
        return torch_device_info()

    def lipsync(self, request: LipSyncRequest, progress: ProgressFn) -> EngineOutput:
        with self.acquire() as pipeline:
            result = pipeline(request, progress)
        return EngineOutput(out=result.output, duration=float(result.stats.duration_s),
                            stats=result.stats.to_dict())

    def face_tracking(self, request: TrackingRequest, progress: ProgressFn) -> EngineOutput:
        from lipsync.faces import render_tracking, tracks_to_json

        tracked = self.pipeline.track(request.video, request.characters, request.options, progress=progress)
        render_tracking(request.video, tracked.tracks, request.output, info=tracked.info,
                        progress=lambda done, total: progress("render", done, total))
        info = tracked.info
        tracks = tracks_to_json(tracked.tracks, info.fps, info.num_frames)
        stats = {"frames": info.num_frames, "fps": float(info.fps),
                 "faces": {t.character_id: len(t) for t in tracked.tracks}}
        return EngineOutput(out=request.output, duration=float(info.duration), stats=stats,
                            extra={"tracks": tracks})


def default_pipeline_factory(settings: Settings) -> Engine:
    return PipelineEngine(settings)
