"""Crops for the Poisson solvers' tests (the torch solve in test_fast_paths, the host one in
test_poisson_host), and cv2.seamlessClone called the way they are compared against it."""

from __future__ import annotations

import cv2
import numpy as np


def crop_pair(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth frame region with noise, and a brighter, noisier generated face over it (a mismatch the
    solve must spread)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([100 + 50 * np.sin(xx / 9), 80 + 0.6 * yy, 120 + 30 * np.cos(yy / 7)], -1)
    dest = np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    src = np.clip(dest.astype(int) + 40 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    return src, dest


def cv2_clone(src: np.ndarray, dest: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """cv2.seamlessClone with the centre that puts every source pixel over the one it came from."""
    x, y, w, h = cv2.boundingRect(mask)
    # seamlessClone overwrites its mask argument (it erodes and inverts it in place): hand it a copy.
    return cv2.seamlessClone(src, dest, mask.copy(), (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
