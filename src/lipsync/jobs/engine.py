"""The engine seam: what the job layer needs from the models, and nothing more.

``Engine`` is a small protocol; ``PipelineEngine`` implements it on top of lipsync.pipeline and
lipsync.faces. The API takes a ``pipeline_factory(settings) -> Engine`` so tests (and the benchmark)
can run the whole server on a fast fake while the real one runs the networks.

``lipsync.jobs.gate.ModelGate`` tracks each of the engine's models (``load_model``) on its own, so a
missing optional model only stops the jobs that need it.
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
from lipsync.errors import UnknownModel
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
    def load_model(self, name: str) -> None:
        """Load one of lipsync.jobs.gate.ENGINE_MODELS ("insightface", "wav2lip", "gfpgan"); idempotent;
        raises a ModelError subclass when it is unavailable."""

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


def device_type_for(settings: Settings, device_info: dict[str, Any]) -> str:
    """"cuda" or "cpu": where this server's jobs run, for settings that depend on it (enhance=auto)."""
    if settings.device == "cpu" or not device_info.get("gpu_available"):
        return "cpu"
    return "cuda"


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

    def load_model(self, name: str) -> None:
        if name == "insightface":
            # Face analysis runs on onnxruntime, not torch: one backend serves every device's pipeline.
            backend = self.pipelines[0].get_face_backend()
            for other in self.pipelines[1:]:
                other.share_face_backend(backend)
        elif name == "wav2lip":
            for pipeline in self.pipelines:
                pipeline.get_generator()
        elif name == "gfpgan":
            for pipeline in self.pipelines:
                pipeline.get_enhancer()
        else:
            raise UnknownModel(f"unknown engine model {name!r}; expected insightface, wav2lip or gfpgan")

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
