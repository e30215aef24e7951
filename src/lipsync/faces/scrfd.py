"""SCRFD face detector (InsightFace's det_10g / det_2.5g family) on an onnxruntime session.

Pre-processing: letterbox into the model input (``input_size`` square when the session's input is
dynamic, 640 unless told: the backend factory passes 320 on CPU, see ``DEVICE_INPUT_SIZE``; the fixed
size otherwise), padding bottom/right; RGB; (x - 127.5) / 128; NCHW float32.

Post-processing: for each stride s in 8/16/32 (2 anchors per feature-map cell, anchors consecutive per
cell), anchor centres are (col * s, row * s); box = centre -/+ distances * s (left, top, right, bottom);
landmark k = centre + (dx_k, dy_k) * s. Scores >= 0.5 are kept, then NMS at IoU 0.4, then coordinates
are divided by the letterbox scale to return to the original frame.

The 9 outputs (scores, boxes, keypoints per stride) are recognised by their last dimension (1, 4, 10)
and their length (more anchors = finer stride), so both the insightface numeric naming without a batch
axis and the re-exported batched layout work regardless of output order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lipsync.errors import ModelError
from lipsync.faces.align import letterbox, nms
from lipsync.types import Box, Face

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = 640
#: Input side for a dynamic model when the settings leave it unset. On a CPU detection runs every few
#: frames in the critical path, and a face that fills a talking-head frame needs no 640-pixel input:
#: 320 costs about a quarter of the compute (benchmarks/detection.py measures both on the shared clips).
DEVICE_INPUT_SIZE = {"cpu": 320, "cuda": 640}


def default_input_size(providers: list[str] | tuple[str, ...]) -> int:
    """The input side for a session running on ``providers`` (CUDA first means the GPU)."""
    on_gpu = bool(providers) and providers[0] == "CUDAExecutionProvider"
    return DEVICE_INPUT_SIZE["cuda" if on_gpu else "cpu"]


@dataclass(frozen=True, slots=True)
class _Level:
    stride: int
    scores: str
    boxes: str
    kps: str | None


class SCRFDDetector:
    """Detect faces with 5 landmarks. ``session`` is an ``onnxruntime.InferenceSession`` (or anything
    with the same ``get_inputs``/``get_outputs``/``run``)."""

    def __init__(
        self,
        session,
        *,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_size: int = DEFAULT_INPUT_SIZE,
        max_faces: int = 0,
    ) -> None:
        self.session = session
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_faces = int(max_faces)
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        # A fixed model (e.g. scrfd_2.5g_bnkps_320) must be fed its own size; dynamic ones get 640.
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            self.input_height, self.input_width = int(shape[2]), int(shape[3])
        else:
            self.input_height = self.input_width = int(input_size)
        self._levels = self._layout([(o.name, list(o.shape)) for o in session.get_outputs()])
        self.output_names = [o.name for o in session.get_outputs()]
        self._anchor_cache: dict[tuple[int, int, int], np.ndarray] = {}

    # --- layout ---------------------------------------------------------------------------------------

    @staticmethod
    def _layout(outputs: list[tuple[str, list]]) -> list[_Level]:
        """Group the outputs into levels from their shapes."""
        groups: dict[int, list[tuple[str, int | None, int]]] = {1: [], 4: [], 10: []}
        for order, (name, shape) in enumerate(outputs):
            last = shape[-1] if shape else None
            if last not in groups:
                raise ModelError(
                    f"SCRFD output {name!r} has shape {shape}: expected last dimension 1, 4 or 10"
                )
            length = shape[-2] if len(shape) >= 2 and isinstance(shape[-2], int) else None
            groups[last].append((name, length, order))
        n = len(groups[1])
        if n == 0 or len(groups[4]) != n or len(groups[10]) not in (0, n):
            raise ModelError(
                f"SCRFD model has {len(outputs)} outputs; expected score/box(/keypoint) outputs per stride"
            )
        strides = {3: [8, 16, 32], 5: [8, 16, 32, 64, 128]}.get(n)
        if strides is None:
            raise ModelError(f"SCRFD model with {n} levels is not supported (expected 3 or 5)")

        def ordered(items):
            # Finer strides have more anchors; unknown lengths keep the file's order.
            if all(length is not None for _, length, _ in items):
                return [name for name, _, _ in sorted(items, key=lambda t: (-t[1], t[2]))]
            return [name for name, _, _ in sorted(items, key=lambda t: t[2])]

        scores, boxes = ordered(groups[1]), ordered(groups[4])
        kps = ordered(groups[10]) if groups[10] else [None] * n
        return [_Level(s, sc, bx, kp) for s, sc, bx, kp in zip(strides, scores, boxes, kps, strict=True)]

    @property
    def has_landmarks(self) -> bool:
        return self._levels[0].kps is not None

    def _anchors(self, stride: int, count: int) -> np.ndarray:
        fh, fw = self.input_height // stride, self.input_width // stride
        per_cell = max(1, count // max(1, fh * fw))
        key = (stride, per_cell, fh * fw)
        cached = self._anchor_cache.get(key)
        if cached is None:
            ys, xs = np.mgrid[:fh, :fw]
            centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
            cached = np.repeat(centres, per_cell, axis=0)
            self._anchor_cache[key] = cached
        return cached

    # --- running --------------------------------------------------------------------------------------

    def preprocess(self, frame_bgr: np.ndarray):
        lb = letterbox(frame_bgr, self.input_width, self.input_height)
        rgb = lb.image[:, :, ::-1].astype(np.float32)
        blob = ((rgb - 127.5) / 128.0).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob), lb

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in ``frame_bgr`` (BGR uint8), best score first, in original-frame coordinates."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR frame, got shape {frame_bgr.shape}")
        blob, lb = self.preprocess(frame_bgr)
        raw = self.session.run(self.output_names, {self.input_name: blob})
        outs = dict(zip(self.output_names, raw, strict=True))
        boxes, kps, scores = self.decode(outs)
        if len(scores) == 0:
            return []
        keep = nms(boxes, scores, self.nms_threshold)
        if self.max_faces > 0:
            keep = keep[: self.max_faces]
        boxes = lb.to_original(boxes[keep])
        kps = lb.to_original(kps[keep]) if kps is not None else None
        h, w = frame_bgr.shape[:2]
        faces = []
        for j, i in enumerate(keep):
            x1, y1, x2, y2 = (float(v) for v in boxes[j])
            box = Box(max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
            if box.area <= 0:
                continue
            # A detector without keypoints: place the template in the box so alignment still works.
            lm = kps[j].reshape(5, 2).astype(np.float32) if kps is not None else _template_landmarks(box)
            faces.append(Face(box=box, landmarks=lm, score=float(scores[i])))
        return faces

    def decode(self, outs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Boxes (N, 4), landmarks (N, 10) and scores (N,) above the threshold, in letterbox pixels."""
        all_boxes, all_kps, all_scores = [], [], []
        for level in self._levels:
            sc = _flat(outs[level.scores], 1)[:, 0]
            bx = _flat(outs[level.boxes], 4) * level.stride
            anchors = self._anchors(level.stride, len(sc))
            if len(anchors) != len(sc):
                raise ModelError(
                    f"SCRFD stride {level.stride}: {len(sc)} scores for {len(anchors)} anchors "
                    f"at input {self.input_width}x{self.input_height}"
                )
            idx = np.nonzero(sc >= self.score_threshold)[0]
            if idx.size == 0:
                continue
            c = anchors[idx]
            d = bx[idx]
            all_boxes.append(
                np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], 1)
            )
            all_scores.append(sc[idx])
            if level.kps is not None:
                k = _flat(outs[level.kps], 10)[idx] * level.stride
                all_kps.append(k + np.tile(c, 5))
        if not all_scores:
            return np.zeros((0, 4), np.float32), None, np.zeros((0,), np.float32)
        kps = np.concatenate(all_kps).astype(np.float32) if all_kps else None
        return (
            np.concatenate(all_boxes).astype(np.float32),
            kps,
            np.concatenate(all_scores).astype(np.float32),
        )


def _flat(array: np.ndarray, last: int) -> np.ndarray:
    """Drop a leading batch axis if present: (1, N, C) or (N, C) -> (N, C)."""
    a = np.asarray(array, dtype=np.float32)
    return a.reshape(-1, last)


def _template_landmarks(box: Box) -> np.ndarray:
    from lipsync.faces.align import ARCFACE_SIZE, ARCFACE_TEMPLATE

    rel = ARCFACE_TEMPLATE / ARCFACE_SIZE
    return np.stack([box.x1 + rel[:, 0] * box.width, box.y1 + rel[:, 1] * box.height], 1).astype(np.float32)
