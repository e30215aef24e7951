"""Poisson (seamless) cloning on the host: numpy for the field, scipy's pocketfft for the sine transforms.

The problem and its discretisation are ``cv2.seamlessClone``'s with NORMAL_CLONE, as in the torch solve of
:mod:`lipsync.stages.poisson` (whose docstring lists them: outer ring cleared, 7x7-eroded guidance,
forward-difference gradients with a mirrored last row and column, the rectangle's border fixed to the
frame, values truncated to 0..255). Only the inversion is arranged differently: a type-I sine transform
over both axes of all three channels at once (``scipy.fft.dstn``, float32), where seamlessClone runs
complex DFTs of the mirrored data channel by channel, with per-pixel loops and copies in between; and the
unknown is the correction to the frame (see _solve). Within 1 grey level of seamlessClone
(tests/test_poisson_host.py); Chaplin's face (a 169x181 rectangle) in 1.4 ms against its 6.5 (best of 60).
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.errors import InputError

_ERODE = np.ones((7, 7), np.uint8)  # OpenCV's three 3x3 erosions
MIN_SIDE = 3  # a solve needs an interior: at least one pixel inside the fixed border


def seamless_clone(source: np.ndarray, dest: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``source`` cloned into ``dest`` (equal HxWx3 uint8 images, aligned) where ``mask`` (HxW) is nonzero.

    Returns a new uint8 image: ``dest`` with the mask's bounding rectangle (its outer one-pixel ring
    cleared first) replaced by the Poisson solution; the same result as ``cv2.seamlessClone`` given the
    centre that puts every source pixel over the destination pixel it came from."""
    if source.shape != dest.shape or dest.ndim != 3 or dest.shape[2] != 3:
        raise InputError(f"source {source.shape} and dest {dest.shape} must be equal HxWx3 images")
    if mask.shape != dest.shape[:2]:
        raise InputError(f"mask {mask.shape} does not fit images {dest.shape}", field="mask")
    support = (mask != 0).astype(np.uint8)
    support[0, :] = support[-1, :] = 0
    support[:, 0] = support[:, -1] = 0
    out = dest.copy()
    x, y, w, h = cv2.boundingRect(support)
    if min(w, h) < MIN_SIDE:
        return out
    # Erosion over a margin around the rectangle (the cleared pixels there count); outside the image,
    # erode's default border counts as set, as it does for OpenCV's erosion of its rectangle view.
    ey0, ey1, ex0, ex1 = max(0, y - 3), min(dest.shape[0], y + h + 3), max(0, x - 3), min(dest.shape[1], x + w + 3)
    guide = cv2.erode(support[ey0:ey1, ex0:ex1], _ERODE)[y - ey0 : y - ey0 + h, x - ex0 : x - ex0 + w]
    rect = (slice(y, y + h), slice(x, x + w))
    _solve(source[rect], dest[rect], guide.astype(bool), out[rect])
    return out


def load_transforms() -> None:
    """Import scipy.fft (0.16 s once per process) ahead of the first solve."""
    import scipy.fft  # noqa: F401


def _dst2(x: np.ndarray) -> np.ndarray:
    """The unnormalised 2-D type-I sine transform of each channel of (h, w, C) float32 ``x`` (per axis
    y_k = 2 sum_j x_j sin(pi (k+1)(j+1) / (n+1))), in float32, ``x`` overwritten.

    scipy's pocketfft (a dependency already; imported when first needed, see load_transforms, so
    start-up does not pay it). It replaced OpenCV's DFT of the zero-padded rows, whose imaginary part is
    half the transform: on Chaplin's 179x167x3 interior 0.46 against 1.29 ms (best of 40, interleaved),
    with no padded copies, strided halves or transposes between the axes."""
    from scipy import fft

    return fft.dstn(x, type=1, axes=(0, 1), overwrite_x=True, workers=1)


def _solve(source: np.ndarray, dest: np.ndarray, guide: np.ndarray, out: np.ndarray) -> None:
    """One rectangle: (h, w, 3) uint8 source and frame and the (h, w) eroded mask (bool); the solution's
    interior is written into ``out`` (the frame's copy of the rectangle: its border, the frame's own, stays).

    Solved as the frame plus a correction ``e``: the guidance field is the frame's gradient plus, under the
    eroded mask, the gradient of (source - frame); the frame satisfies its own part, so ``e`` solves the
    Poisson equation of the rest with a zero border (no border terms, one gradient instead of two). The
    erosion (7x7) keeps every pixel the forward differences under the mask read inside the mask, so the
    source needs no clearing outside it, and clears the rectangle's last three rows and columns, so the
    differences there (seamlessClone's mirrored ones) never count. The values are whole numbers in float32,
    so the field is exact and only the transforms round.

    Laid out as (h, 3w) rows, the channels interleaved as the images are: no transposes, and numpy's
    element-wise loops run over whole rows (a mask broadcast over a trailing axis of 3 runs 3-element
    loops). Chaplin's face: 1.27 ms against 2.12 for the same solve on (3, h, w) planes, the same pixels."""
    h, w = guide.shape
    diff = cv2.subtract(source, dest, dtype=cv2.CV_32F).reshape(h, 3 * w)
    under = np.repeat(guide, 3, axis=1)
    gx = np.zeros_like(diff)
    np.subtract(diff[:, 3:], diff[:, :-3], out=gx[:, :-3])
    gx *= under
    gy = np.zeros_like(diff)
    np.subtract(diff[1:], diff[:-1], out=gy[:-1])
    gy *= under
    # Divergence by backward differences on the interior.
    rhs = gx[1:-1, 3:-3] - gx[1:-1, :-6]
    rhs += gy[1:-1, 3:-3]
    rhs -= gy[:-2, 3:-3]
    ih, iw = h - 2, w - 2
    # The 5-point Laplacian is diagonal in the type-I sine basis (2 cos(pi k / (n + 1)) - 2 per axis);
    # the transform is its own inverse up to 1 / (2 (n + 1)) per axis.
    ky = 2.0 * np.cos(np.pi * np.arange(1, ih + 1) / (ih + 1)) - 2.0
    kx = 2.0 * np.cos(np.pi * np.arange(1, iw + 1) / (iw + 1)) - 2.0
    scale = 4.0 * (ih + 1) * (iw + 1)
    eigen = np.repeat(((ky[:, None] + kx[None, :]) * scale).astype(np.float32), 3, axis=1)
    coeff = _dst2(rhs.reshape(ih, iw, 3)).reshape(ih, 3 * iw)
    coeff /= eigen
    solved = _dst2(coeff.reshape(ih, iw, 3))
    solved += dest[1:-1, 1:-1]
    # Truncated, not rounded, as OpenCV converts its float solution.
    out[1:-1, 1:-1] = np.clip(solved, 0.0, 255.0, out=solved).astype(np.uint8)
