"""Shot-change detection for the tracker: a cut is where a small thumbnail's colour histogram jumps."""

from __future__ import annotations

import cv2
import numpy as np

THUMB_WIDTH, THUMB_HEIGHT = 96, 54


class ShotChangeDetector:
    """Declares a cut when the HSV histogram of a 96x54 thumbnail changes by more than ``threshold``
    (Bhattacharyya distance, 0 = same distribution, 1 = disjoint). About 0.2 ms a frame at any size."""

    def __init__(self, threshold: float = 0.3) -> None:
        self.threshold = float(threshold)
        self._previous: np.ndarray | None = None
        self.last_distance = 0.0

    @staticmethod
    def signature(frame_bgr: np.ndarray) -> np.ndarray:
        # Every step-th pixel first (a view), so the area resize reads a few times the thumbnail's pixels,
        # not the whole frame: 0.2 ms instead of 1.5 ms a 480p frame, and the tracker sees every frame.
        height, width = frame_bgr.shape[:2]
        step = max(1, min(height // (2 * THUMB_HEIGHT), width // (2 * THUMB_WIDTH)))
        thumb = cv2.resize(
            frame_bgr[::step, ::step], (THUMB_WIDTH, THUMB_HEIGHT), interpolation=cv2.INTER_AREA
        )
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
