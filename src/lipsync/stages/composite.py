"""Paste a generated lower face back into its frame without a visible seam.

Poisson blending (``cv2.seamlessClone``'s NORMAL_CLONE) keeps the generated face's gradients but takes its
boundary values from the frame, so a brightness or colour mismatch is spread smoothly over the region
instead of showing as an edge. By default the same equations are solved by :mod:`lipsync.stages.poisson_host`
(scipy's sine transforms, all channels at once: 4-6x faster, within 1 grey level of seamlessClone); the
``poisson_solver`` option "opencv" calls seamlessClone itself. The clone runs over the binary support of a soft elliptical lower-face
mask; the result is then alpha-blended by that soft mask, which both softens the edge further and
guarantees that every pixel outside the support is the frame's own (seamlessClone alone nudges pixels
outside the mask inside its bounding rectangle by a grey level or so).

When Poisson blending is off, fails (``cv2.error``), the box touches the frame border (the Poisson
boundary would lie on the image edge, and seamlessClone refuses regions that do) or the region is too
small for the solve to carry any of the face (under MIN_POISSON_SIDE pixels), a feathered alpha blend
is used instead, with a mask of its own (``feathered_face_mask``): without Poisson nothing evens out a
brightness mismatch, so the blend itself must spread it, over a ramp about a fifth of the face wide
(a mask blurred only at Poisson's few pixels made a grey disc's edge jump by 86 levels within 12 px).
The method used is returned so the pipeline can count it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from lipsync.errors import InputError
from lipsync.stages.poisson_host import seamless_clone
from lipsync.types import Box

log = logging.getLogger(__name__)

CompositeMethod = Literal["poisson", "feather"]
#: How the Poisson blend is solved: "dst", seamlessClone's equations solved by stages.poisson_host (within
#: 1 grey level of it, 4-6x faster); "opencv", cv2.seamlessClone itself.
PoissonSolver = Literal["dst", "opencv"]
MaskSource = np.ndarray | Callable[[], np.ndarray]

# Mask values below this cannot move a uint8 pixel after rounding; dropping them keeps the support tight.
_ALPHA_FLOOR = 1.0 / 512.0
# Below this many pixels on the short side of the clone region, seamlessClone's solve is all boundary: it
# returns (nearly) the frame itself, erasing the face (measured: no change at all for regions under ~10 px).
MIN_POISSON_SIDE = 12


@dataclass(frozen=True)
class CompositeResult:
    frame: np.ndarray  # uint8 HxWx3 BGR, a new array (the input frame is not modified)
    method: CompositeMethod


def lower_face_mask(
    h: int,
    w: int,
    *,
    center_y: float = 0.66,
    half_height: float = 0.26,
    half_width: float = 0.38,
    feather: float = 0.03,
) -> np.ndarray:
    """An (h, w) float32 mask in [0, 1]: an ellipse over the lower face of a face crop, edges Gaussian-blurred.

    Geometry is in fractions of the crop: the ellipse is centred at ``center_y * h`` (horizontally centred)
    with semi-axes ``half_width * w`` and ``half_height * h``; the blur's sigma is ``feather * min(h, w)``.
    The ellipse is shrunk where needed so the blurred mask stays at least one pixel inside the crop: the
    Poisson solve needs frame pixels all round its region, and seamlessClone clears the mask's outer ring.
    Crops too small to hold an interior (under 3 pixels a side) get an all-zero mask.
    """
    if isinstance(h, bool) or isinstance(w, bool) or int(h) != h or int(w) != w or h < 1 or w < 1:
        raise InputError(f"mask size must be positive integers, got {h}x{w}", field="box")
    h, w = int(h), int(w)
    sigma = max(0.0, feather * min(h, w))
    margin = math.ceil(3.0 * sigma) + 1  # blur reach + the ring seamlessClone clears
    max_margin = max(1, min(h, w) // 4)  # keep at least half of a small crop for the ellipse itself
    if margin > max_margin:
        margin = max_margin
        sigma = (margin - 1) / 3.0
    cy, cx = center_y * (h - 1), (w - 1) / 2.0
    top, bottom = max(margin, cy - half_height * h), min(h - 1 - margin, cy + half_height * h)
    left, right = max(margin, cx - half_width * w), min(w - 1 - margin, cx + half_width * w)
    mask = np.zeros((h, w), dtype=np.float32)
    if bottom < top or right < left:
        return mask
    # The ellipse inscribed in the clipped rectangle; +0.5 so a one-pixel-wide range still holds a pixel.
    ey, ex = (top + bottom) / 2.0, (left + right) / 2.0
    ay, ax = (bottom - top) / 2.0 + 0.5, (right - left) / 2.0 + 0.5
    ys = (np.arange(h, dtype=np.float32)[:, None] - ey) / ay
    xs = (np.arange(w, dtype=np.float32)[None, :] - ex) / ax
    mask[ys**2 + xs**2 <= 1.0] = 1.0
    if sigma > 0.0:
        radius = math.ceil(3.0 * sigma)
        mask = cv2.GaussianBlur(mask, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_CONSTANT)
    mask[mask < _ALPHA_FLOOR] = 0.0
    return np.clip(mask, 0.0, 1.0, out=mask)


# Where the feathered mask's ramp starts, in units of the lower-face ellipse's radius: the mouth (its
# corners sit at about 0.53) stays the generated face; the ramp then runs out as far as the crop
# allows (the ellipse leaves about 0.3 of its radius to the crop's sides and bottom).
_FEATHER_INNER = 0.55
_FEATHER_OUTER_MAX = 1.35


def feathered_face_mask(
    h: int, w: int, *, center_y: float = 0.66, half_height: float = 0.26, half_width: float = 0.38
) -> np.ndarray:
    """The mask of the feathered fallback: (h, w) float32 in [0, 1], 1 over the mouth and falling
    smoothly (smoothstep over the ellipse's radius) to 0 one pixel inside the crop. The ramp scales with
    the face: about 0.2 of its height below the mouth and 0.28 of its width to the sides."""
    if isinstance(h, bool) or isinstance(w, bool) or int(h) != h or int(w) != w or h < 1 or w < 1:
        raise InputError(f"mask size must be positive integers, got {h}x{w}", field="box")
    h, w = int(h), int(w)
    cy, cx = center_y * (h - 1), (w - 1) / 2.0
    ay, ax = half_height * h, half_width * w
    # The largest radius whose ellipse keeps one pixel clear of the crop's edges (the blend's support
    # must not reach them, or the crop's border would show as an edge).
    outer = min((h - 2 - cy) / ay, (cx - 1) / ax, (cy - 1) / ay, _FEATHER_OUTER_MAX)
    if outer <= _FEATHER_INNER + 0.05:  # a crop too small for a ramp
        return lower_face_mask(h, w, center_y=center_y, half_height=half_height, half_width=half_width)
    ys = (np.arange(h, dtype=np.float32)[:, None] - cy) / ay
    xs = (np.arange(w, dtype=np.float32)[None, :] - cx) / ax
    t = np.clip((outer - np.sqrt(ys**2 + xs**2)) / (outer - _FEATHER_INNER), 0.0, 1.0)
    mask = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    mask[mask < _ALPHA_FLOOR] = 0.0
    return mask


def _int_box(box: Box) -> tuple[int, int, int, int]:
    coords = (box.x1, box.y1, box.x2, box.y2)
    if not all(math.isfinite(c) for c in coords):
        raise InputError(f"box must have finite coordinates, got {box}", field="box")
    x1, y1, x2, y2 = (round(c) for c in coords)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"box is empty: {box}", field="box")
    return x1, y1, x2, y2


def _check_image(image: np.ndarray, field: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise InputError(f"{field} must be a uint8 HxWx3 BGR image, got {dtype} {shape}", field=field)


def _blend(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """fg * alpha + bg * (1 - alpha), rounded, in one OpenCV pass. blendLinear divides by the weights' sum
    plus 1e-5, which moves a value by at most 0.003: where alpha is 0 (or 1) the result is bg (fg) exactly."""
    return cv2.blendLinear(fg, bg, alpha, 1.0 - alpha)


# Frame pixels kept around the mask's bounding rectangle for the Poisson solve (its boundary values).
_POISSON_MARGIN = 2
# seamlessClone solves over the mask's bounding rectangle (w x h) with sine transforms computed as DFTs of
# lengths 2w - 2 and 2h - 2, and both OpenCV's DFT and scipy's pocketfft (the host solve) are several times
# slower on lengths with a large prime factor (measured: a 168x180 rectangle, lengths 2*167 and 2*179, 19 ms
# in seamlessClone against 8 for 169x183; pocketfft on the 3x179x166 interior 1.78 ms, 3x179x167 0.45). The
# rectangle is grown by a few frame pixels to the size within reach whose lengths are cheapest (_dft_cost).
_GROW_MAX_FRACTION = 0.04  # of the side, at least _GROW_MIN pixels
_GROW_MIN = 4
# seamlessClone erodes the mask with a 7x7 square before taking the clone's gradients: a lone mask pixel
# this far (Chebyshev) from every other mask pixel widens the solve without adding to the guidance.
_ERODE_REACH = 3
# Work per element of one DFT pass by radix: OpenCV has kernels for 2 (as 4), 3 and 5 (pocketfft also for
# 7 and 11); any other prime p goes through a generic butterfly of about p operations.
_RADIX_COST = {2: 1.0, 3: 1.6, 5: 2.4}


def _dft_cost(length: int) -> float:
    """Relative cost of a DFT of ``length``: length times the sum of its prime factors' radix costs."""
    n, total, factor = length, 0.0, 2
    while factor * factor <= n:
        while n % factor == 0:
            total += _RADIX_COST.get(factor, float(factor))
            n //= factor
        factor += 1
    if n > 1:
        total += _RADIX_COST.get(n, float(n))
    return length * total


def dft_friendly_side(n: int, room: int) -> int:
    """The side in ``[n, n + reach]`` whose sine transform (a DFT of length 2 * (side - 1)) costs least,
    the reach being ``room`` or _GROW_MAX_FRACTION of ``n`` (at least _GROW_MIN), whichever is less;
    the smallest of equals."""
    if n < 3:
        return n
    reach = max(0, min(room, max(_GROW_MIN, int(n * _GROW_MAX_FRACTION))))
    return min(range(n, n + reach + 1), key=lambda side: (_dft_cost(2 * (side - 1)), side))


def _grown_rect(binary: np.ndarray, rect: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``rect`` (x, y, w, h, the mask's bounding rectangle) grown to DFT-friendly sides, centred on it and
    kept one pixel inside ``binary``; ``rect`` itself when the corners that would widen it are not clear
    of the mask (see _ERODE_REACH)."""
    x, y, w, h = rect
    rows, cols = binary.shape
    gw = dft_friendly_side(w, cols - 2 - w)
    gh = dft_friendly_side(h, rows - 2 - h)
    if (gw, gh) == (w, h):
        return rect
    nx = min(max(1, x - (gw - w) // 2), cols - 1 - gw)
    ny = min(max(1, y - (gh - h) // 2), rows - 1 - gh)
    r = _ERODE_REACH
    for cy, cx in ((ny, nx), (ny + gh - 1, nx + gw - 1)):
        if binary[max(0, cy - r) : cy + r + 1, max(0, cx - r) : cx + r + 1].any():
            return rect
    return nx, ny, gw, gh


def _poisson(region: np.ndarray, crop: np.ndarray, support: np.ndarray, solver: PoissonSolver = "dst") -> np.ndarray:
    """seamlessClone of ``crop`` into ``region`` (same size) over ``support``; returns the cloned region,
    meant for the pixels inside ``support`` (the only ones the caller keeps; outside it, the region's own).

    The solve's Dirichlet boundary is the mask's bounding rectangle grown by at most a few pixels of the
    region (_grown_rect), marked by one mask pixel at two opposite corners: seamlessClone's 7x7 erosion
    removes those from the guidance field, so only the boundary moves (measured against the tight
    rectangle on the shared photos at 0.45-1.5x their size: composited pixels move by at most 3 grey
    levels, under 0.1 on average; Chaplin's face solves in 8 ms instead of 13-20, 40 random sizes in
    0.80-0.83x the time)."""
    binary = support.astype(np.uint8) * 255
    tight = cv2.boundingRect(binary)
    x, y, w, h = _grown_rect(binary, tight)
    if (x, y, w, h) != tight:
        binary[y, x] = binary[y + h - 1, x + w - 1] = 255
    # Solve on that rectangle plus a margin, not the whole box: seamlessClone works on the mask's bounding
    # rectangle whatever it is given, so the margin only saves the copying around it.
    m = _POISSON_MARGIN
    y0, y1 = max(0, y - m), min(region.shape[0], y + h + m)
    x0, x1 = max(0, x - m), min(region.shape[1], x + w + m)
    sub = (slice(y0, y1), slice(x0, x1))
    # seamlessClone centres the mask's bounding rect on p, placing its top-left at p - (w//2, h//2):
    # this p puts every crop pixel exactly over the region pixel it came from.
    center = (x - x0 + w // 2, y - y0 + h // 2)
    out = region.copy()
    if solver == "opencv":
        out[sub] = cv2.seamlessClone(np.ascontiguousarray(crop[sub]), np.ascontiguousarray(region[sub]),
                                     np.ascontiguousarray(binary[sub]), center, cv2.NORMAL_CLONE)  # fmt: skip
    else:
        out[sub] = seamless_clone(crop[sub], region[sub], binary[sub])
    return out


def composite_face(
    frame: np.ndarray,
    generated_crop: np.ndarray,
    box: Box,
    *,
    poisson: bool = True,
    mask: np.ndarray | None = None,
    feather_mask: MaskSource | None = None,
    solver: PoissonSolver = "dst",
    inplace: bool = False,
) -> CompositeResult:
    """Paste ``generated_crop`` (already resized to the box) into ``frame`` at ``box`` (integer pixels).

    ``mask`` overrides :func:`lower_face_mask` (float 0..1, the crop's size) for Poisson, and for the
    feathered blend too unless ``feather_mask`` is given (an array, or a function making it: it is only
    needed when the feather is used); with neither, the feathered blend uses :func:`feathered_face_mask`
    (a soft ramp: the fallback must not leave a hard seam). Pixels where the mask used is 0 are returned
    unchanged, bit for bit; so is everything outside the box. A box reaching outside the frame is
    clipped to it (and blended with the feather, since it touches the border). ``solver``: see
    PoissonSolver. ``inplace``: paste into ``frame`` itself (returned as the result's frame) instead of
    a copy of it.
    """
    _check_image(frame, "frame")
    _check_image(generated_crop, "generated_crop")
    x1, y1, x2, y2 = _int_box(box)
    bh, bw = y2 - y1, x2 - x1
    if generated_crop.shape[:2] != (bh, bw):
        raise InputError(
            f"generated_crop is {generated_crop.shape[1]}x{generated_crop.shape[0]} but the box is {bw}x{bh}; "
            "resize the crop to the box first",
            field="generated_crop",
        )
    custom = mask is not None
    if mask is None:
        alpha = lower_face_mask(bh, bw)
    else:
        if mask.shape != (bh, bw):
            raise InputError(f"mask is {mask.shape}, expected {(bh, bw)}", field="mask")
        alpha = np.clip(np.nan_to_num(mask.astype(np.float32)), 0.0, 1.0)
        alpha[alpha < _ALPHA_FLOOR] = 0.0

    fh, fw = frame.shape[:2]
    # Clip to the frame, keeping the mask's geometry relative to the whole box.
    cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(fw, x2), min(fh, y2)
    if cx2 <= cx1 or cy2 <= cy1:
        raise InputError(f"box {box} lies outside the {fw}x{fh} frame", field="box")
    inner = (slice(cy1 - y1, cy2 - y1), slice(cx1 - x1, cx2 - x1))
    crop, alpha = generated_crop[inner], alpha[inner]
    touches_border = x1 <= 0 or y1 <= 0 or x2 >= fw or y2 >= fh

    out = frame if inplace else frame.copy()
    region = frame[cy1:cy2, cx1:cx2]  # read whole before the paste writes over it (in place or not)
    support = alpha > 0.0
    if not support.any():
        return CompositeResult(out, "feather")
    fg = crop

    method: CompositeMethod = "feather"
    _, _, rect_w, rect_h = cv2.boundingRect(support.astype(np.uint8))
    if poisson and touches_border:
        log.debug("box %s touches the %dx%d frame border: feathered blend instead of Poisson", box, fw, fh)
    elif poisson and min(rect_w, rect_h) < MIN_POISSON_SIDE:
        log.debug(
            "mask region of box %s is %dx%d, too small for Poisson: feathered blend", box, rect_w, rect_h
        )
    elif poisson:
        try:
            fg = _poisson(region, crop, support, solver)
            method = "poisson"
        except cv2.error as exc:
            log.info("the Poisson solve failed for box %s (%s): feathered blend instead", box, exc)
    if method == "feather" and (feather_mask is not None or not custom):
        if callable(feather_mask):
            feather_mask = feather_mask()
        if feather_mask is None:
            alpha = feathered_face_mask(bh, bw)[inner]
        else:
            if feather_mask.shape != (bh, bw):
                raise InputError(f"feather_mask is {feather_mask.shape}, expected {(bh, bw)}", field="mask")
            alpha = np.clip(np.nan_to_num(feather_mask.astype(np.float32)), 0.0, 1.0)[inner]
            alpha[alpha < _ALPHA_FLOOR] = 0.0
    # Only the mask's support changes: _blend returns the region's own pixels exactly where alpha is 0.
    out[cy1:cy2, cx1:cx2] = _blend(np.ascontiguousarray(fg), region, np.ascontiguousarray(alpha))
    return CompositeResult(out, method)
