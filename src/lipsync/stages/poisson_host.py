"""Poisson (seamless) cloning on the host: numpy for the field, scipy's pocketfft for the sine transforms.

The problem and its discretisation are ``cv2.seamlessClone``'s with NORMAL_CLONE, as in the torch solve of
:mod:`lipsync.stages.poisson` (whose docstring lists them: outer ring cleared, 7x7-eroded guidance,
forward-difference gradients with a mirrored last row and column, the rectangle's border fixed to the
frame, values truncated to 0..255). Only the inversion is arranged differently: a type-I sine transform
over both axes of all three channels at once (``scipy.fft.dstn``, float32), where seamlessClone runs
complex DFTs of the mirrored data channel by channel, with per-pixel loops and copies in between; and the
unknown is the correction to the frame (see _solve). Within 1 grey level of seamlessClone
(tests/test_poisson_host.py); Chaplin's face (a 169x181 rectangle) in about 1.5 ms against its 12.
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
    inside = support[rect].astype(bool)
    src = np.where(inside[..., None], source[rect], 0).transpose(2, 0, 1).astype(np.float32)
    dst = dest[rect].transpose(2, 0, 1).astype(np.float32)
    out[rect] = _solve(src, dst, guide.astype(bool))
    return out


def _gradients(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w): forward differences along x and y; the last column/row differences against its mirror."""
    gx = np.empty_like(img)
    gy = np.empty_like(img)
    np.subtract(img[:, :, 1:], img[:, :, :-1], out=gx[:, :, :-1])
    np.subtract(img[:, :, -2], img[:, :, -1], out=gx[:, :, -1])
    np.subtract(img[:, 1:], img[:, :-1], out=gy[:, :-1])
    np.subtract(img[:, -2], img[:, -1], out=gy[:, -1])
    return gx, gy


def load_transforms() -> None:
    """Import scipy.fft (0.16 s once per process) ahead of the first solve."""
    import scipy.fft  # noqa: F401


def _dst2(x: np.ndarray) -> np.ndarray:
    """The unnormalised 2-D type-I sine transform of each channel of (C, h, w) float32 ``x`` (per axis
    y_k = 2 sum_j x_j sin(pi (k+1)(j+1) / (n+1))), in float32, ``x`` overwritten.

    scipy's pocketfft (a dependency already; imported when first needed, see load_transforms, so
    start-up does not pay it). It replaced OpenCV's DFT of the zero-padded rows, whose imaginary part is
    half the transform: on Chaplin's 3x179x167 interior 0.46 against 1.29 ms (best of 40, interleaved),
    with no padded copies, strided halves or transposes between the axes."""
    from scipy import fft

    return fft.dstn(x, type=1, axes=(1, 2), overwrite_x=True, workers=1)


def _solve(src: np.ndarray, dst: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """One rectangle: (3, h, w) float32 source (zero outside the mask), frame and the (h, w) eroded mask
    (bool) -> the (h, w, 3) uint8 solution, its border the frame's own.

    Solved as the frame plus a correction ``e``: the guidance field is the frame's gradient plus, under the
    eroded mask, the gradient of (source - frame); the frame satisfies its own part, so ``e`` solves the
    Poisson equation of the rest with a zero border (no border terms, one gradient instead of two). The
    values are whole numbers in float32, so the field is exact and only the transforms round."""
    _, h, w = dst.shape
    gx, gy = _gradients(src - dst)
    np.multiply(gx, guide, out=gx)
    np.multiply(gy, guide, out=gy)
    # Divergence by backward differences on the interior.
    rhs = gx[:, 1:-1, 1:-1] - gx[:, 1:-1, :-2]
    rhs += gy[:, 1:-1, 1:-1]
    rhs -= gy[:, :-2, 1:-1]
    ih, iw = h - 2, w - 2
    # The 5-point Laplacian is diagonal in the type-I sine basis (2 cos(pi k / (n + 1)) - 2 per axis);
    # the transform is its own inverse up to 1 / (2 (n + 1)) per axis.
    ky = 2.0 * np.cos(np.pi * np.arange(1, ih + 1) / (ih + 1)) - 2.0
    kx = 2.0 * np.cos(np.pi * np.arange(1, iw + 1) / (iw + 1)) - 2.0
    scale = 4.0 * (ih + 1) * (iw + 1)
    coeff = _dst2(rhs)
    coeff /= ((ky[:, None] + kx[None, :]) * scale).astype(np.float32)
    result = dst.transpose(1, 2, 0).astype(np.uint8)
    solved = _dst2(coeff)
    solved += dst[:, 1:-1, 1:-1]
    # Truncated, not rounded, as OpenCV converts its float solution.
    result[1:-1, 1:-1] = np.clip(solved, 0.0, 255.0, out=solved).transpose(1, 2, 0).astype(np.uint8)
    return result
