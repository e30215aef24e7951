"""A face kept so that it can be embedded later, if ever.

Without characters, the tracker follows faces by box continuity within a shot and only needs an identity
embedding when a face must be compared with one it cannot follow that way (a face appearing while others
are out of view, the first sample after a cut). Most anonymous faces are never compared, so their
embedding is deferred: the tracker keeps a small crop around the face instead of the frame (a frame per
face for the whole video would grow with its length) and embeds that crop on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lipsync.faces.backend import FaceBackend
from lipsync.types import Box, Face

# Context kept around the box, as a fraction of its larger side: ArcFace's 112x112 alignment template and
# dlib's face chip reach about a quarter of the face beyond the box, so half keeps every pixel they read.
SNAPSHOT_MARGIN = 0.5


@dataclass(frozen=True, slots=True)
class FaceSnapshot:
    crop: np.ndarray  # BGR uint8, a copy (the frame may be reused by the decoder)
    face: Face  # box and landmarks in the crop's coordinates

    @classmethod
    def take(cls, frame: np.ndarray, face: Face, margin: float = SNAPSHOT_MARGIN) -> FaceSnapshot:
        height, width = frame.shape[:2]
        box = face.box
        reach = margin * max(box.x2 - box.x1, box.y2 - box.y1)
        x1, y1 = max(0, int(box.x1 - reach)), max(0, int(box.y1 - reach))
        x2, y2 = min(width, int(np.ceil(box.x2 + reach))), min(height, int(np.ceil(box.y2 + reach)))
        crop = np.ascontiguousarray(frame[y1:y2, x1:x2])
        shifted = replace(
            face,
            box=Box(box.x1 - x1, box.y1 - y1, box.x2 - x1, box.y2 - y1),
            landmarks=np.asarray(face.landmarks, np.float32) - np.array([x1, y1], np.float32),
        )
        return cls(crop, shifted)

    def embed(self, backend: FaceBackend) -> np.ndarray:
        return backend.embed(self.crop, self.face)
