"""Face crops aligned to the face: crop by a similarity transform, paste back by its inverse.

Wav2Lip draws the mouth in the lower half of an upright face crop. A tilted head puts the mouth
elsewhere in an axis-aligned box, so each face is cropped in its own upright frame instead:

* **Angle.** The roll of the five landmarks (the rotation of their similarity fit to the ArcFace
  template, :mod:`lipsync.faces.pose`). Within ``DEAD_BAND_DEG`` of upright the crop is not turned:
  landmark noise on a frontal face (the shared clips: within about 1 degree frame to frame) must not
  resample a crop today's axis-aligned path gets right. From there the applied angle ramps up to the full
  roll at ``TURN_FULL_DEG`` (continuous, and never more than ``DEAD_BAND_DEG`` from level: the mouth of a
  face tilting through the band moves by under a pixel of the 96x96 crop).
* **Centre and size.** Near upright (roll up to ``BLEND_START_DEG``) they are the tracked box's, so the
  crop's scale and centre are today's padded box and ``pads`` keep their meaning. A detector's box of a
  tilted face is not the face's upright box (SCRFD-2.5G measured: 305x300 at 45 degrees for a 242x344
  upright face; a quarter-turned face has its sides swapped), so from ``BLEND_END_DEG`` on they come from
  the landmarks: the template box ``TEMPLATE_BOX`` (SCRFD-2.5G's upright box in ArcFace-112 template
  units, calibrated on the shared photos and clips: centre (56, 63), size 80x112, spread 2-6 units)
  placed by the landmarks' similarity fit. In between, the two are blended linearly.
* **Pads** are added in the face's own frame (top is towards the top of the head), in pixels, as before.

``crop`` (the 96x96 input) and ``paste`` (the generated face warped back with the mask) are the OpenCV
path; a face that counts as upright takes today's slice + resize + composite exactly, bit for bit. The
same crop runs as a torch op, :func:`crop_faces_torch` (``affine_grid`` + ``grid_sample``), for frames
already on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from lipsync.faces.pose import template_fit
from lipsync.stages.composite import (
    CompositeResult,
    MaskSource,
    PoissonSolver,
    composite_face,
    feathered_face_mask,
    lower_face_mask,
)
from lipsync.stages.lipsync import FACE_SIZE, postprocess_face, prepare_face
from lipsync.types import Box, Pads

DEAD_BAND_DEG = 2.0
BLEND_START_DEG = 5.0
BLEND_END_DEG = 15.0
TURN_FULL_DEG = 10.0
#: (centre x, centre y, width, height) of SCRFD's upright face box in ArcFace-112 template units.
TEMPLATE_BOX = (56.0, 63.0, 80.0, 112.0)
#: Crops smaller than this on a side pass the face through (as today's 4-pixel rule).
MIN_SIDE = 4


@dataclass(frozen=True)
class FaceCrop:
    """Where one face is cropped from its frame and pasted back to.

    ``matrix`` maps frame pixels to crop pixels (a rotation at scale 1); the crop is ``width`` x
    ``height`` in the face's upright frame and is resized to 96x96 for Wav2Lip. ``box`` is the integer,
    in-frame paste region: the padded box itself for an upright face, the bounding box of the turned crop
    otherwise. ``angle`` is the rotation applied (degrees); 0 means today's axis-aligned crop exactly.
    """

    matrix: np.ndarray  # (2, 3) float64, frame -> crop
    width: int
    height: int
    box: Box
    angle: float

    @property
    def upright(self) -> bool:
        return self.angle == 0.0

    def matrix96(self) -> np.ndarray:
        """Frame pixels -> 96x96 input pixels (pixel centres kept, as cv2.resize maps them)."""
        return _matrix_to(self, FACE_SIZE)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Frame points (N, 2) in crop pixels."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return pts @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Crop points (N, 2) in frame pixels."""
        inv = cv2.invertAffineTransform(self.matrix)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return pts @ inv[:, :2].T + inv[:, 2]


def _blend_weight(roll: float) -> float:
    """1 near upright (use the tracked box), 0 from BLEND_END_DEG on (use the landmarks)."""
    r = abs(roll)
    return float(np.clip((BLEND_END_DEG - r) / (BLEND_END_DEG - BLEND_START_DEG), 0.0, 1.0))


def applied_angle(roll: float) -> float:
    """The rotation the crop applies for a face rolled by ``roll`` degrees: none within DEAD_BAND_DEG,
    ramping up to the full roll at TURN_FULL_DEG (continuous; the crop stays within DEAD_BAND_DEG of
    level throughout)."""
    r = abs(roll)
    if r <= DEAD_BAND_DEG:
        return 0.0
    if r >= TURN_FULL_DEG:
        return roll
    return math.copysign((r - DEAD_BAND_DEG) * TURN_FULL_DEG / (TURN_FULL_DEG - DEAD_BAND_DEG), roll)


def face_crop(box: Box, landmarks: np.ndarray, pads: Pads, width: int, height: int) -> FaceCrop | None:
    """The aligned crop of one tracked face (unpadded ``box``, five ``landmarks``) in a ``width`` x
    ``height`` frame, or None when too little of it is in the frame to crop."""
    fit = template_fit(landmarks)
    scale = math.hypot(fit[0, 0], fit[1, 0])
    roll = math.degrees(math.atan2(fit[1, 0], fit[0, 0]))
    angle = applied_angle(roll)
    if angle == 0.0:
        padded = box.padded(pads, width, height)
        if padded.width < MIN_SIDE or padded.height < MIN_SIDE:
            return None
        x1, y1 = int(padded.x1), int(padded.y1)
        matrix = np.array([[1.0, 0.0, -x1], [0.0, 1.0, -y1]])
        return FaceCrop(matrix, int(padded.width), int(padded.height), padded, 0.0)

    w = _blend_weight(roll)
    tcx, tcy, tw, th = TEMPLATE_BOX
    lm_centre = fit[:, :2] @ np.array([tcx, tcy]) + fit[:, 2]
    centre = w * np.array(box.center) + (1.0 - w) * lm_centre
    face_w = w * box.width + (1.0 - w) * tw * scale
    face_h = w * box.height + (1.0 - w) * th * scale
    top, bottom, left, right = pads
    crop_w, crop_h = round(face_w + left + right), round(face_h + top + bottom)
    if crop_w < MIN_SIDE or crop_h < MIN_SIDE:
        return None
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # Crop x runs along the face's right, y along its down; (0, 0) is the padded box's top-left corner.
    offset = np.array([face_w / 2.0 + left, face_h / 2.0 + top])
    rot = np.array([[c, s], [-s, c]])
    matrix = np.hstack([rot, (offset - rot @ centre)[:, None]])
    crop = FaceCrop(matrix, crop_w, crop_h, Box(0, 0, 0, 0), angle)
    corners = crop.to_frame(np.array([[0, 0], [crop_w, 0], [0, crop_h], [crop_w, crop_h]], float))
    x1, y1 = max(0, math.floor(corners[:, 0].min())), max(0, math.floor(corners[:, 1].min()))
    x2, y2 = min(width, math.ceil(corners[:, 0].max())), min(height, math.ceil(corners[:, 1].max()))
    if x2 - x1 < MIN_SIDE or y2 - y1 < MIN_SIDE:
        return None
    return FaceCrop(matrix, crop_w, crop_h, Box(float(x1), float(y1), float(x2), float(y2)), angle)


# --- crop -----------------------------------------------------------------------------------------------


def crop_face(frame: np.ndarray, crop: FaceCrop) -> np.ndarray:
    """The 96x96 BGR Wav2Lip input of one face. Upright: today's slice + resize. Turned: the crop is
    first resampled at scale 1 (bilinear, edges replicated) and then resized exactly as an upright one,
    so shrinking keeps INTER_AREA's anti-aliasing."""
    if crop.upright:
        return prepare_face(frame, crop.box)
    upright = warp_crop(frame, crop)
    return prepare_face(upright, Box(0.0, 0.0, float(crop.width), float(crop.height)))


def warp_crop(frame: np.ndarray, crop: FaceCrop) -> np.ndarray:
    """The crop at full resolution, in the face's upright frame."""
    return cv2.warpAffine(
        frame, crop.matrix, (crop.width, crop.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


# --- paste back -----------------------------------------------------------------------------------------


def crop_mask(
    crop: FaceCrop, *, shrink: float = 0.0, occlusion: np.ndarray | None = None, feather: bool = False
) -> np.ndarray:
    """The composite's mask in crop pixels: the lower-face ellipse, shrunk by ``shrink`` (a fraction of its
    size, its top edge kept, so the bottom and sides leave the jaw line), times the occlusion mask (1 where
    the face is visible) when there is one. ``feather``: the soft-edged mask of the feathered fallback
    (the same ellipse, ramped over a width proportional to the face) instead of Poisson's."""
    mask = _shape_mask(crop.height, crop.width, shrink, feather)
    if occlusion is not None:
        occ = np.asarray(occlusion, dtype=np.float32)
        if occ.shape != mask.shape:
            occ = cv2.resize(occ, (crop.width, crop.height), interpolation=cv2.INTER_LINEAR)
        mask = mask * np.clip(occ, 0.0, 1.0)
    return mask


@functools.lru_cache(maxsize=64)
def _shape_mask(h: int, w: int, shrink: float, feather: bool) -> np.ndarray:
    """crop_mask's shape, read-only and kept: a tracked face keeps its crop size for frames at a time
    (Chaplin: 2.6 frames a size on average), and the blurred ellipse costs 0.4-2 ms a face to redraw."""
    shape = feathered_face_mask if feather else lower_face_mask
    mask = shape(h, w, **shrunk_ellipse(shrink))
    mask.flags.writeable = False
    return mask


def shrunk_ellipse(shrink: float) -> dict[str, float]:
    """lower_face_mask's ellipse geometry with both semi-axes scaled by ``1 - shrink``, top edge fixed."""
    if not 0.0 <= shrink < 1.0:
        raise ValueError(f"mask shrink must be within [0, 1), got {shrink}")
    if shrink == 0.0:
        return {}
    cy, hh, hw = 0.66, 0.26, 0.38  # lower_face_mask's defaults
    new_hh = hh * (1.0 - shrink)
    return {"center_y": cy - hh + new_hh, "half_height": new_hh, "half_width": hw * (1.0 - shrink)}


def paste_face(
    frame: np.ndarray,
    generated: np.ndarray,
    crop: FaceCrop,
    mask: np.ndarray,
    *,
    poisson: bool = True,
    feather_mask: MaskSource | None = None,
    solver: PoissonSolver = "dst",
    inplace: bool = False,
) -> CompositeResult:
    """Paste one generated 96x96 face back: resized to the crop, warped by the inverse transform with its
    ``mask`` (crop pixels, see :func:`crop_mask`), blended by Poisson or the feather (``feather_mask``: an
    array or a function making it, called only if the feather is used). Pixels where the warped mask is
    0 (everything outside the turned crop among them) keep the frame's values exactly. ``solver`` and
    ``inplace``: as :func:`composite_face`'s."""
    face = postprocess_face(generated, Box(0.0, 0.0, float(crop.width), float(crop.height)))
    if feather_mask is None:
        feather_mask = functools.partial(crop_mask, crop, feather=True)
    blend = {"poisson": poisson, "solver": solver, "inplace": inplace}
    if crop.upright:
        return composite_face(frame, face, crop.box, mask=mask, feather_mask=feather_mask, **blend)
    x1, y1, x2, y2 = (int(v) for v in (crop.box.x1, crop.box.y1, crop.box.x2, crop.box.y2))
    # Paste-region pixels -> crop pixels; WARP_INVERSE_MAP samples the crop there.
    local = crop.matrix.copy()
    local[:, 2] += crop.matrix[:, :2] @ np.array([x1, y1], dtype=np.float64)
    size = (x2 - x1, y2 - y1)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped_face = cv2.warpAffine(face, local, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)

    def warp(m: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(
            m.astype(np.float32), local, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
        )

    soft = feather_mask
    return composite_face(frame, warped_face, crop.box, mask=warp(mask),
                          feather_mask=lambda: warp(soft() if callable(soft) else soft), **blend)  # fmt: skip


# --- the same crop as a torch op ------------------------------------------------------------------------


def crop_faces_torch(frames, index: Sequence[int], crops: Sequence[FaceCrop], size: int = FACE_SIZE,
                     *, area: bool = False):  # fmt: skip
    """96x96 crops of ``crops`` from ``frames`` (a uint8 (B, H, W, 3) torch tensor, on any device, e.g. the
    CUDA device the generator runs on): bilinear ``grid_sample``, edges replicated.
    ``index[k]`` is the frame of ``crops[k]``. Returns a uint8 (N, size, size, 3) tensor on that device.

    Without ``area`` it samples the frame straight at 96x96 (no prefilter), so it matches
    ``cv2.warpAffine`` with ``matrix96`` and INTER_LINEAR. With ``area`` (the render's choice) a crop that
    shrinks by about k (2..AREA_MAX) is sampled at k*96 and averaged over k x k blocks, as
    :func:`crop_face`'s INTER_AREA shrink averages, instead of aliasing the face's texture into the
    network's input (measured in tests/test_align_crop.py against crop_face)."""
    import torch
    import torch.nn.functional as F

    if len(index) != len(crops):
        raise ValueError(f"{len(index)} frame indices for {len(crops)} crops")
    n = len(crops)
    out = torch.empty((n, size, size, 3), dtype=torch.uint8, device=frames.device)
    if n == 0:
        return out
    h, w = int(frames.shape[1]), int(frames.shape[2])
    # affine_grid works in normalised coordinates (align_corners=False: pixel i <-> (2i + 1) / n - 1).
    to_norm_in = np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0, 0, 1.0]])
    factors = [_area_factor(crop, size) if area else 1 for crop in crops]
    thetas = np.empty((n, 2, 3), dtype=np.float32)
    for k, (crop, factor) in enumerate(zip(crops, factors, strict=True)):
        side = size * factor
        from_norm_out = np.array(
            [[side / 2.0, 0.0, side / 2.0 - 0.5], [0.0, side / 2.0, side / 2.0 - 0.5], [0, 0, 1.0]]
        )
        inv = np.vstack([cv2.invertAffineTransform(_matrix_to(crop, side)), [0.0, 0.0, 1.0]])
        thetas[k] = (to_norm_in @ inv @ from_norm_out)[:2]
    theta = torch.from_numpy(thetas).to(frames.device)
    order, scale = np.asarray(index), np.asarray(factors)
    for f, factor in sorted({(int(a), int(b)) for a, b in zip(order, scale, strict=True)}):
        ks = torch.from_numpy(np.nonzero((order == f) & (scale == factor))[0]).to(frames.device)
        side = size * factor
        src = frames[f].permute(2, 0, 1)[None].float().expand(len(ks), -1, -1, -1)
        grid = F.affine_grid(theta[ks], [len(ks), 3, side, side], align_corners=False)
        sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if factor > 1:
            sampled = F.avg_pool2d(sampled, factor)
        out[ks] = sampled.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


AREA_MAX = 4  # the largest k x k block crop_faces_torch(area=True) averages (a 384-px face)


def _area_factor(crop: FaceCrop, size: int) -> int:
    return max(1, min(AREA_MAX, round(max(crop.width, crop.height) / size)))


def _matrix_to(crop: FaceCrop, side: int) -> np.ndarray:
    """Frame pixels -> ``side`` x ``side`` pixels of the crop (matrix96 for side 96)."""
    sx, sy = side / crop.width, side / crop.height
    scale = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return (scale @ np.vstack([crop.matrix, [0.0, 0.0, 1.0]]))[:2]
