"""The face-backend protocol, the InsightFace backend, and the factory that picks one from settings."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from lipsync.errors import ModelError, ModelNotAvailable
from lipsync.faces.arcface import INSIGHTFACE_DEFAULT_THRESHOLD, ArcFaceRecognizer, cosine_similarity01
from lipsync.faces.scrfd import SCRFDDetector, default_input_size
from lipsync.models.device import cpu_session_options
from lipsync.types import Face

if TYPE_CHECKING:
    from lipsync.config import Settings

log = logging.getLogger(__name__)

CPU_SESSION_THREADS = 1  # onnxruntime threads per face-model session on a CPU (see create_session)


@runtime_checkable
class FaceBackend(Protocol):
    """Detect faces, embed them, compare embeddings on a 0..1 scale."""

    name: str
    default_threshold: float

    def detect(self, frame_bgr: np.ndarray) -> list[Face]: ...

    def embed(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray: ...

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float: ...


def embed_faces(backend: FaceBackend, frame_bgr: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
    """Embeddings of ``faces``, batched when the backend can."""
    many = getattr(backend, "embed_many", None)
    if many is not None:
        return list(many(frame_bgr, faces))
    return [backend.embed(frame_bgr, f) for f in faces]


def similarity_matrix(backend: FaceBackend, a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) similarities on 0..1."""
    out = np.zeros((len(a), len(b)), dtype=np.float32)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i, j] = backend.similarity(x, y)
    return out


class InsightFaceBackend:
    """SCRFD detection + ArcFace recognition (buffalo_l). Similarity = cosine clipped to [0, 1]."""

    name = "insightface"
    default_threshold = INSIGHTFACE_DEFAULT_THRESHOLD

    def __init__(self, detector: SCRFDDetector, recognizer: ArcFaceRecognizer | LazyRecognizer) -> None:
        self.detector = detector
        self.recognizer = recognizer

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        return self.detector.detect(frame_bgr)

    def embed(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self.recognizer.embed(frame_bgr, face)

    def embed_many(self, frame_bgr: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        return self.recognizer.embed_many(frame_bgr, faces)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine_similarity01(a, b)


def face_device(backend: FaceBackend) -> str | None:
    """``cuda`` or ``cpu``: where ``backend`` detects faces, or None when it does not say (test doubles).
    Tracking's per-device defaults (``sample_every``) follow it."""
    device = getattr(backend, "device", None)
    if isinstance(device, str):
        return device
    session = getattr(getattr(backend, "detector", None), "session", None)
    providers = getattr(session, "get_providers", None)
    if providers is None:
        return None
    return "cuda" if providers()[:1] == ["CUDAExecutionProvider"] else "cpu"


def onnx_providers(device: str = "auto") -> list[str]:
    """CUDA first when onnxruntime has it (and the device choice allows it), CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        log.warning("device=cuda but this onnxruntime has no CUDAExecutionProvider; faces run on CPU")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: Path, device: str = "auto"):
    """An onnxruntime session for ``path``, with a clear error when the file is missing or unreadable."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailable(f"face model file not found: {path}")
    providers = onnx_providers(device)
    if providers[0] == "CPUExecutionProvider":
        # Face models run beside the render's other stages: one thread each; the pipeline is the parallelism.
        options = cpu_session_options(CPU_SESSION_THREADS)
    else:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # CUDA provider fallbacks are reported by us, not as noise
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
        raise ModelError(f"cannot load face model {path}: {exc}") from exc


def create_face_backend(settings: Settings, store=None) -> FaceBackend:
    """The backend named by ``settings.face_backend``.

    insightface: ``settings.det_model`` / ``settings.rec_model`` when set, otherwise det_10g.onnx and
    w600k_r50.onnx from ``store.ensure("buffalo_l")`` (a ModelStore built from ``settings`` if none is
    given). dlib: needs the ``lipsync[offline]`` extra; raises ModelNotAvailable when it is missing.
    """
    if settings.face_backend == "dlib":
        from lipsync.faces.dlib_backend import DlibBackend

        return DlibBackend()
    if settings.face_backend != "insightface":
        raise ModelError(f"unknown face backend {settings.face_backend!r} (expected insightface or dlib)")
    det_path, rec_path = settings.det_model, settings.rec_model
    if det_path is None or rec_path is None:
        if store is None:
            from lipsync.models import ModelStore

            store = ModelStore(settings)
        if hasattr(store, "face_model_paths"):  # honours det_model/rec_model and checks them
            det_path, rec_path = store.face_model_paths()
        else:
            folder = Path(store.ensure("buffalo_l"))
            det_path = det_path or folder / "det_10g.onnx"
            rec_path = rec_path or folder / "w600k_r50.onnx"
    device = str(getattr(settings, "device", "auto"))
    det_session = create_session(det_path, device)
    if getattr(settings, "cpu_detector", "onnxruntime") == "mnn" and det_session.get_providers()[:1] == [
        "CPUExecutionProvider"
    ]:
        det_session = mnn_detector_session(Path(det_path), Path(settings.models_dir) / "mnn", det_session)
    det_size = getattr(settings, "det_size", None) or default_input_size(det_session.get_providers())
    detector = SCRFDDetector(det_session, input_size=det_size)
    log.info("SCRFD detector input %dx%d", detector.input_width, detector.input_height)
    if not Path(rec_path).is_file():  # missing files are reported now, not at the first embedding
        raise ModelNotAvailable(f"face model file not found: {rec_path}")
    return InsightFaceBackend(detector, LazyRecognizer(rec_path, device))


def mnn_detector_session(det_path: Path, cache_dir: Path, session):
    """The detector's graph on MNN in a worker process (``cpu_detector=mnn``): SCRFD-2.5G at 320 runs in
    12 ms there against onnxruntime's 21 (one core; its convolutions are Winograd-transformed), and the
    detector is the biggest share of the render's own CPU time after the encoder. ``session`` (onnxruntime)
    when MNN is missing or cannot convert the file, with a warning; it also takes over should the worker
    fail later (lipsync.models.mnn_runtime.MnnGraphSession)."""
    from lipsync.models.mnn_runtime import MnnUnavailable, graph_session

    try:
        mnn_session = graph_session(det_path, cache_dir, session)
    except MnnUnavailable as exc:
        log.warning("%s; the face detector runs on onnxruntime instead", exc)
        return session
    log.info("face detector %s on MNN (worker process %s)", det_path.name, mnn_session.pid)
    return mnn_session


class LazyRecognizer:
    """The ArcFace recognizer, loaded on its first embedding: without characters a steady shot needs
    none (lipsync.faces.tracking), and the 166 MB session costs about half a second to create."""

    def __init__(self, path: Path, device: str) -> None:
        self.path, self.device = Path(path), device
        self._recognizer: ArcFaceRecognizer | None = None
        self._lock = threading.Lock()  # the tracker and a reference-image request may race to load

    @property
    def loaded(self) -> bool:
        return self._recognizer is not None

    def get(self) -> ArcFaceRecognizer:
        with self._lock:
            if self._recognizer is None:
                self._recognizer = ArcFaceRecognizer(create_session(self.path, self.device))
                log.info("face recognizer loaded from %s", self.path)
            return self._recognizer

    def embed(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self.get().embed(frame_bgr, face)

    def embed_many(self, frame_bgr: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        return self.get().embed_many(frame_bgr, faces)
