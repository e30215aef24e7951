"""Shot-change detection for the tracker: a cheap colour-histogram test on every frame."""

from __future__ import annotations

import cv2
import numpy as np


class ShotChangeDetector:
    """Declares a cut when the HSV histogram of a 96x54 thumbnail changes by more than ``threshold``
    (Bhattacharyya distance, 0 = same distribution, 1 = disjoint). About a millisecond per 1080p frame."""

    def __init__(self, threshold: float = 0.3) -> None:
        self.threshold = float(threshold)
        self._previous: np.ndarray | None = None
        self.last_distance = 0.0

    @staticmethod
    def signature(frame_bgr: np.ndarray) -> np.ndarray:
        thumb = cv2.resize(frame_bgr, (96, 54), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(thumb, cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [12, 4, 4], [0, 180, 0, 256, 0, 256])
        return cv2.normalize(hist, hist).astype(np.float32)

    def update(self, frame_bgr: np.ndarray) -> bool:
        """True when ``frame_bgr`` starts a new shot (never for the first frame)."""
        sig = self.signature(frame_bgr)
        prev, self._previous = self._previous, sig
        if prev is None:
            self.last_distance = 0.0
            return False
        self.last_distance = float(cv2.compareHist(prev, sig, cv2.HISTCMP_BHATTACHARYYA))
        return self.last_distance > self.threshold
