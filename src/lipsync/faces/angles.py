"""Detection at several angles: faces turned sideways or upside down, and tilted faces re-detected upright.

SCRFD is trained on upright faces. Measured with SCRFD-2.5G on the shared portraits: at 20 and 45 degrees
it still finds the face (landmark error up to 0.18 eye distances at 45), at 90 and 270 degrees it finds a
face with a low score (0.53-0.75) and landmarks off by 0.25-0.5 eye distances, at 180 degrees it finds
nothing or a face with its landmarks mirrored (upright faces score 0.76-0.89). Hence two steps:

1. **Quarter-turn fallback** (``fallback=True``, the ``detect_angles=fallback`` job setting): when a frame
   has no face at 0 degrees, or none scoring at least ``RETRY_SCORE``, it is also searched turned by 90, 180
   and 270 degrees (``cv2.rotate``: exact, no resampling); the boxes and landmarks found are turned back
   (a box becomes the bounding box of its turned rectangle, exact for quarter turns) and all candidates
   go through one non-maximum suppression by score, so the orientation the detector is surest of wins.
2. **Upright refinement** (always): a face whose landmarks' roll is more than ``REFINE_ROLL_DEG`` from the
   angle it was searched at is searched again in a region around it turned upright by that roll; its
   landmarks come from there, turned back, and its box is the bounding box of the refined box turned
   back (the box of the rotated face). Upright faces are never touched, so their detections are today's.

Landmarks keep the face's own order (left eye first as seen in the face's upright frame), so alignment,
embedding and the aligned crop work on them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from lipsync.faces.align import nms
from lipsync.faces.backend import FaceBackend
from lipsync.faces.pose import angle_gap, roll_degrees
from lipsync.types import Box, Face

QUARTER_TURNS: tuple[int, ...] = (90, 180, 270)
# cv2.rotate codes turning the frame clockwise by the angle.
_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
#: Below this best score at 0 degrees the fallback also tries the quarter turns (see the module docstring).
RETRY_SCORE = 0.8
#: A face tilted further than this from the angle it was searched at is re-detected upright.
REFINE_ROLL_DEG = 15.0
#: In the fallback, a detection whose landmarks' roll is further than this from its view is dropped.
PLAUSIBLE_ROLL_DEG = 60.0
# The refinement region: this many template face heights around the face, at most REFINE_MAX_SIDE pixels.
REFINE_REGION = 2.0
REFINE_MAX_SIDE = 640
NMS_IOU = 0.4


def turn_back(points: np.ndarray, angle: int, width: int, height: int) -> np.ndarray:
    """Points (N, 2) found in the frame turned clockwise by ``angle`` (a quarter turn) back in the frame
    (``width`` x ``height``, continuous pixel coordinates)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    if angle == 0:
        back = (x, y)
    elif angle == 90:  # (x, y) -> (height - y, x)
        back = (y, height - x)
    elif angle == 180:
        back = (width - x, height - y)
    elif angle == 270:  # (x, y) -> (y, width - x)
        back = (width - y, x)
    else:
        raise ValueError(f"angle must be a quarter turn (0, 90, 180, 270), got {angle}")
    return np.stack(back, axis=1).astype(np.float32)


def _corners(box: Box) -> np.ndarray:
    return np.array([[box.x1, box.y1], [box.x2, box.y1], [box.x1, box.y2], [box.x2, box.y2]], np.float64)


def _bounding(points: np.ndarray, width: int, height: int) -> Box:
    x1, y1 = points.min(axis=0)
    x2, y2 = points.max(axis=0)
    return Box(max(0.0, float(x1)), max(0.0, float(y1)), min(float(width), float(x2)), min(float(height), float(y2)))


def _same_face_once(found: Sequence[tuple[Face, int]]) -> list[tuple[Face, int]]:
    """One candidate per face seen in several views: among overlapping candidates that agree on the roll,
    the best scored (the others would only be refined to the same face)."""
    kept: list[tuple[Face, int]] = []
    for face, angle in sorted(found, key=lambda fa: -fa[0].score):
        roll = roll_degrees(face.landmarks)
        if not any(
            face.box.iou(k.box) > NMS_IOU and angle_gap(roll, roll_degrees(k.landmarks)) < REFINE_ROLL_DEG * 2
            for k, _ in kept
        ):
            kept.append((face, angle))
    return kept


class AngleDetector:
    """``detect`` of a face backend with the quarter-turn fallback (optional) and upright refinement.
    ``searches`` counts detector runs, so the cost per frame can be read off."""

    def __init__(self, backend: FaceBackend, *, fallback: bool = False, refine: bool = True) -> None:
        self.backend = backend
        self.fallback = bool(fallback)
        self.refine = bool(refine)
        self.searches = 0
        self.fallbacks = 0  # frames searched at the quarter turns
        self.refined = 0  # faces re-detected upright

    def detect(self, frame: np.ndarray) -> list[Face]:
        h, w = frame.shape[:2]
        found = [(f, 0) for f in self._search(frame)]
        retry = self.fallback and (not found or max(f.score for f, _ in found) < RETRY_SCORE)
        if retry:
            self.fallbacks += 1
            for angle in QUARTER_TURNS:
                turned = cv2.rotate(frame, _ROTATE[angle])
                found += [(self._turned_back(f, angle, w, h), angle) for f in self._search(turned)]
            # A detection whose own landmarks lie far off the view it was found in is the detector
            # reading a turned face as upright (measured: mirrored landmarks at 180 degrees); the view
            # the face really is upright in finds it properly.
            found = [(f, a) for f, a in found if angle_gap(roll_degrees(f.landmarks), -a) <= PLAUSIBLE_ROLL_DEG]
            found = _same_face_once(found)
        faces = []
        for face, angle in found:
            if self.refine and angle_gap(roll_degrees(face.landmarks), -angle) > REFINE_ROLL_DEG:
                face = self._upright(frame, face)
            faces.append(face)
        # Refined faces carry their upright score, so one suppression ranks every view fairly.
        return self._suppress(faces) if retry else faces

    def _search(self, image: np.ndarray) -> list[Face]:
        self.searches += 1
        return list(self.backend.detect(image))

    @staticmethod
    def _turned_back(face: Face, angle: int, width: int, height: int) -> Face:
        box = _bounding(turn_back(_corners(face.box), angle, width, height), width, height)
        return Face(box, turn_back(face.landmarks, angle, width, height), face.score, face.embedding)

    @staticmethod
    def _suppress(faces: Sequence[Face]) -> list[Face]:
        if len(faces) < 2:
            return list(faces)
        boxes = np.array([f.box.as_list() for f in faces], dtype=np.float32)
        scores = np.array([f.score for f in faces], dtype=np.float32)
        return [faces[i] for i in nms(boxes, scores, NMS_IOU)]

    def _upright(self, frame: np.ndarray, face: Face) -> Face:
        """``face`` re-detected in a region around it turned upright by its roll (unchanged if not found)."""
        h, w = frame.shape[:2]
        lm = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
        roll = roll_degrees(lm)
        centre = lm.mean(axis=0)
        face_size = max(face.box.width, face.box.height, float(np.ptp(lm, axis=0).max()) * 2.5)
        side = REFINE_REGION * face_size
        scale = min(1.0, REFINE_MAX_SIDE / max(side, 1.0))
        size = max(16, round(side * scale))
        c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        # Frame -> region: turn by -roll about the face centre, scale, centre in the region.
        rot = scale * np.array([[c, s], [-s, c]])
        matrix = np.hstack([rot, (np.array([size / 2.0, size / 2.0]) - rot @ centre)[:, None]])
        region = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        candidates = self._search(region)
        if not candidates:
            return face
        mid = np.array([size / 2.0, size / 2.0])
        best = min(candidates, key=lambda f: float(np.linalg.norm(np.array(f.box.center) - mid)) - f.score)
        if np.linalg.norm(np.array(best.box.center) - mid) > size / 4.0:
            return face  # not the face we were refining
        inv = cv2.invertAffineTransform(matrix)
        back = lambda p: (np.asarray(p, np.float64).reshape(-1, 2) @ inv[:, :2].T + inv[:, 2])  # noqa: E731
        self.refined += 1
        box = _bounding(back(_corners(best.box)), w, h)
        return Face(box, back(best.landmarks).astype(np.float32), best.score, face.embedding)
