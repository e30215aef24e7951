"""Aligned crops on synthetic faces: upright faces take today's path bit for bit, turned faces are levelled
at the same scale, the paste-back follows the warp (mask, Poisson and feather), the occlusion mask and the
mask shrink reach the composite through the render's own stage bodies, the torch crop matches OpenCV."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from lipsync.faces.align import ARCFACE_TEMPLATE
from lipsync.faces.pose import estimate_pose
from lipsync.options import LipSyncOptions
from lipsync.render.job import RenderJob
from lipsync.render.serial import face_jobs, sync_faces
from lipsync.render.stats import CharacterStats, PipelineStats, StageTimer
from lipsync.stages.align_crop import (
    DEAD_BAND_DEG,
    TEMPLATE_BOX,
    crop_face,
    crop_faces_torch,
    crop_mask,
    face_crop,
    paste_face,
)
from lipsync.stages.composite import composite_face
from lipsync.stages.lipsync import FACE_SIZE, postprocess_face, prepare_face
from lipsync.stages.silence import VoicePlan
from lipsync.types import Box, PlanFrame, Track, TrackPoint

PADS = (0, 20, 0, 0)
W, H = 640, 480


def synthetic_face(angle: float, centre=(320.0, 240.0), scale: float = 2.0) -> tuple[Box, np.ndarray]:
    """Landmarks of the template turned by ``angle`` degrees (clockwise on screen) about ``centre``, and the
    box SCRFD gives such a face: its upright template box, centred on it (measured: SCRFD-2.5G keeps the
    upright box size on faces tilted by 20 degrees)."""
    tcx, tcy, tw, th = TEMPLATE_BOX
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rot = np.array([[c, -s], [s, c]])
    pts = (ARCFACE_TEMPLATE - [tcx, tcy]) * scale @ rot.T + centre
    box = Box(
        centre[0] - tw * scale / 2,
        centre[1] - th * scale / 2,
        centre[0] + tw * scale / 2,
        centre[1] + th * scale / 2,
    )
    return box, pts.astype(np.float32)


def textured(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def solid(face: np.ndarray, colour=(255, 0, 255)) -> np.ndarray:
    out = np.empty_like(face)
    out[:] = colour
    return out


# --- geometry -----------------------------------------------------------------------------------------


def test_upright_face_is_todays_crop_and_paste_bit_for_bit():
    frame = textured()
    box, lm = synthetic_face(DEAD_BAND_DEG * 0.9)
    crop = face_crop(box, lm, PADS, W, H)
    assert crop is not None and crop.upright
    padded = box.padded(PADS, W, H)
    assert crop.box == padded
    face = crop_face(frame, crop)
    assert np.array_equal(face, prepare_face(frame, padded))
    generated = np.clip(face.astype(int) + 40, 0, 255).astype(np.uint8)
    for poisson in (True, False):
        new = paste_face(frame, generated, crop, crop_mask(crop), poisson=poisson)
        old = composite_face(frame, postprocess_face(generated, padded), padded, poisson=poisson)
        assert new.method == old.method
        assert np.array_equal(new.frame, old.frame)


@pytest.mark.parametrize("angle", [20.0, 45.0, 90.0, 135.0, 180.0, -60.0, -90.0])
def test_turned_face_is_levelled_at_the_same_scale_and_centre(angle):
    box0, lm0 = synthetic_face(0.0)
    upright = face_crop(box0, lm0, PADS, W, H)
    box, lm = synthetic_face(angle)
    crop = face_crop(box, lm, PADS, W, H)
    assert crop is not None and not crop.upright
    assert (crop.angle - angle + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-4)
    pts = crop.to_crop(lm)
    template_tilt = (ARCFACE_TEMPLATE[1, 1] - ARCFACE_TEMPLATE[0, 1]) * 2.0  # the template's own, 0.4 px
    assert abs((pts[1, 1] - pts[0, 1]) - template_tilt) < 1e-3, "eyes level"
    assert pts[0, 0] < pts[1, 0] and pts[3:, 1].min() > pts[:2, 1].max(), (
        "upright: eyes left-right, mouth below"
    )
    # Same scale and place as the upright face's padded box (pads in the face's own frame).
    assert (crop.width, crop.height) == (upright.width, upright.height)
    assert np.allclose(pts, upright.to_crop(lm0), atol=0.51)


def test_crop_too_small_or_outside_passes_through():
    box, lm = synthetic_face(30.0, scale=0.02)
    assert face_crop(box, lm, (0, 0, 0, 0), W, H) is None
    box, lm = synthetic_face(30.0, centre=(-500.0, -500.0))
    assert face_crop(box, lm, PADS, W, H) is None


def test_tilting_face_keeps_a_stable_crop():
    """A face tilting back and forth (-30..30 degrees, through the dead band and the box/landmark blend):
    its mouth stays put in the 96x96 crop (an axis-aligned crop moves it by ~10 px)."""
    mouths, axis_aligned = [], []
    for t in range(120):
        angle = 30.0 * math.sin(2 * math.pi * t / 40)
        box, lm = synthetic_face(angle, centre=(320.0 + t * 0.5, 240.0))
        crop = face_crop(box, lm, PADS, W, H)
        mouth = lm[3:].mean(axis=0)
        mouths.append(crop.to_crop(mouth[None])[0] * [FACE_SIZE / crop.width, FACE_SIZE / crop.height])
        padded = box.padded(PADS, W, H)
        axis_aligned.append(
            (mouth - [padded.x1, padded.y1]) * [FACE_SIZE / padded.width, FACE_SIZE / padded.height]
        )
    mouths, axis_aligned = np.array(mouths), np.array(axis_aligned)
    assert np.abs(mouths - mouths.mean(axis=0)).max() <= 1.0
    assert np.abs(axis_aligned - axis_aligned.mean(axis=0)).max() > 5.0  # what today's crop does


# --- paste back -----------------------------------------------------------------------------------------


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


@pytest.mark.parametrize("poisson", [True, False])
@pytest.mark.parametrize("angle", [30.0, 90.0, 200.0])
def test_paste_follows_the_warp_and_leaves_no_rectangle_edge(angle, poisson):
    frame = textured()
    box, lm = synthetic_face(angle)
    crop = face_crop(box, lm, PADS, W, H)
    result = paste_face(frame, solid(crop_face(frame, crop)), crop, crop_mask(crop), poisson=poisson)
    assert result.method == ("poisson" if poisson else "feather")
    ys, xs = np.nonzero(_changed(result.frame, frame))
    assert len(xs) > 1000
    inside = crop.to_crop(np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float64))
    # Every changed pixel lies inside the mask's reach (the feathered fallback's is its soft ramp), well
    # inside the turned crop: nothing along the crop's rectangle edge changes.
    mask = crop_mask(crop, feather=not poisson)
    support = cv2.dilate((mask > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    ix = np.clip(inside[:, 0].astype(int), 0, crop.width - 1)
    iy = np.clip(inside[:, 1].astype(int), 0, crop.height - 1)
    assert support[iy, ix].all()
    assert inside[:, 0].min() > 2 and inside[:, 0].max() < crop.width - 2
    assert inside[:, 1].min() > 2 and inside[:, 1].max() < crop.height - 2
    # The patch is centred where the mask is, in the face's own frame (lower face, horizontally centred).
    my, mx = np.nonzero(mask > 0.5)
    assert np.allclose(inside.mean(axis=0), [mx.mean() + 0.5, my.mean() + 0.5], atol=3.0)


def test_mask_shrink_keeps_the_patch_off_the_jaw():
    box, lm = synthetic_face(25.0)
    crop = face_crop(box, lm, PADS, W, H)
    full, shrunk = crop_mask(crop) > 0, crop_mask(crop, shrink=0.3) > 0
    fy, fx = np.nonzero(full)
    sy, sx = np.nonzero(shrunk)
    assert shrunk.sum() < 0.6 * full.sum() and not (shrunk & ~full).any()
    assert sy.max() < fy.max() - 0.1 * crop.height, "the bottom (jaw) edge moves up"
    assert sx.max() - sx.min() < 0.8 * (fx.max() - fx.min()), "the sides move in"
    assert abs(sy.min() - fy.min()) <= 2, "the top stays"
    with pytest.raises(ValueError, match="shrink"):
        crop_mask(crop, shrink=1.5)


# --- through the render's stage bodies ------------------------------------------------------------------


class _Solid:
    """A generator double painting every face one colour."""

    batch_size = 8

    def __call__(self, faces, mels):
        return np.broadcast_to(np.array([255, 0, 255], np.uint8), faces.shape).copy()


class _MarkedRegion:
    """An occlusion double: the given rows/cols of the 96x96 crop are covered (0), the rest visible."""

    def __init__(self, rows: slice, cols: slice) -> None:
        self.rows, self.cols = rows, cols
        self.calls = 0

    def __call__(self, faces):
        self.calls += 1
        out = []
        for _ in faces:
            m = np.ones(faces.shape[1:3], np.float32)
            m[self.rows, self.cols] = 0.0
            out.append(m)
        return out


def _render_once(frame, box, lm, occlusion=None, **options):
    track = Track("a", "a", {0: TrackPoint(0, box, lm, 1.0, False)})
    stats = PipelineStats(characters={"a": CharacterStats("a", "a")})
    jobs = face_jobs([PlanFrame(0)], 0, 1, [track], PADS, W, H, stats)
    job = RenderJob(
        None, None, Fraction(25), 1, "none", [PlanFrame(0)], 1,
        VoicePlan.single(np.zeros((80, 100), np.float32), Fraction(25), 1), None, 16000,
        occlusion=occlusion,
    )  # fmt: skip
    frames = [frame.copy()]
    with ThreadPoolExecutor(1) as pool:
        sync_faces(frames, jobs, 0, job, _Solid(), 8, LipSyncOptions(**options), StageTimer(), stats, pool)
    return frames[0], jobs[0].aligned, stats


@pytest.mark.parametrize("angle", [0.0, 35.0, 180.0])
def test_occlusion_mask_keeps_generated_pixels_out_of_the_marked_region(angle):
    frame = textured(seed=3)
    box, lm = synthetic_face(angle)
    rows, cols = slice(55, 80), slice(20, 50)  # the left half of the mouth area
    masker = _MarkedRegion(rows, cols)
    plain, _, _ = _render_once(frame, box, lm)
    out, crop, stats = _render_once(frame, box, lm, occlusion=masker, poisson_blending=False)
    assert masker.calls == 1 and stats.faces_synced == 1
    # Frame pixels whose place in the 96x96 crop is inside the marked region (one pixel in from its edge,
    # the reach of the bilinear resize and warp) keep the frame's values exactly ...
    ys, xs = np.mgrid[0:H, 0:W]
    pts = crop.to_crop(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)) * [
        FACE_SIZE / crop.width,
        FACE_SIZE / crop.height,
    ]
    u, v = pts[:, 0].reshape(H, W), pts[:, 1].reshape(H, W)
    covered = (u > cols.start + 1) & (u < cols.stop - 1) & (v > rows.start + 1) & (v < rows.stop - 1)
    assert covered.sum() > 500
    assert np.array_equal(out[covered], frame[covered])
    # ... while without the occlusion mask they are painted, and beside the region they still are.
    assert _changed(plain, frame)[covered].mean() > 0.9
    beside = (u > 55) & (u < 70) & (v > 60) & (v < 75)
    assert _changed(out, frame)[beside].mean() > 0.9


def test_face_jobs_count_turned_and_out_of_pose_faces():
    box, lm = synthetic_face(40.0)
    _, crop, stats = _render_once(textured(), box, lm)
    assert not crop.upright and stats.characters["a"].frames_rotated == 1
    assert stats.characters["a"].frames_beyond_pose_limit == 0
    yawed = lm.copy()
    yawed[2] += crop.to_frame(np.array([[40.0, 0.0]]))[0] - crop.to_frame(np.array([[0.0, 0.0]]))[0]
    assert abs(estimate_pose(yawed).yaw) > 35
    _, _, stats = _render_once(textured(), box, yawed)
    assert stats.characters["a"].frames_beyond_pose_limit == 1


def test_pose_of_a_frontal_and_a_turned_face():
    _, lm = synthetic_face(70.0)
    pose = estimate_pose(lm)
    assert (
        pose.roll == pytest.approx(70.0, abs=1e-4)
        and abs(pose.yaw) < 1.0
        and pose.scale == pytest.approx(2.0)
    )
    assert pose.beyond_limits() and not estimate_pose(synthetic_face(10.0)[1]).beyond_limits()


# --- the torch op ---------------------------------------------------------------------------------------


def _torch_vs_opencv(device: str) -> None:
    frame = textured(seed=5)
    crops, index = [], []
    for k, angle in enumerate([0.0, 12.0, 45.0, 90.0, -150.0]):
        box, lm = synthetic_face(angle, centre=(300.0 + 10 * k, 230.0))
        crops.append(face_crop(box, lm, PADS, W, H))
        index.append(k % 2)
    frames = torch.from_numpy(np.stack([frame, frame])).to(device)
    out = crop_faces_torch(frames, index, crops).cpu().numpy()
    assert out.shape == (5, FACE_SIZE, FACE_SIZE, 3) and out.dtype == np.uint8
    for k, crop in enumerate(crops):
        ref = cv2.warpAffine(
            frame,
            crop.matrix96(),
            (FACE_SIZE, FACE_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        diff = np.abs(out[k].astype(int) - ref.astype(int))
        assert diff.max() <= 1, f"crop {k}: {diff.max()}"
        # Against the production path (scale-1 warp, then INTER_AREA) only the shrink filter differs.
        assert np.abs(out[k].astype(int) - crop_face(frame, crop).astype(int)).mean() < 3.0


def test_torch_crop_matches_opencv_on_cpu():
    _torch_vs_opencv("cpu")


@pytest.mark.gpu
def test_torch_crop_matches_opencv_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _torch_vs_opencv("cuda")


def test_area_averaged_torch_crop_is_closer_to_the_host_crop_on_large_faces(shared_media):
    """The render's device crop (area=True) against crop_face (INTER_AREA): real faces shrunk 2-4x."""
    image = cv2.imread(str(shared_media("obama.jpg")))
    h, w = image.shape[:2]
    frames = torch.from_numpy(image[None].copy())
    crops = []
    for side, angle in ((200, 0.0), (300, 0.0), (380, 0.0), (300, 30.0)):
        box = Box(492 - side / 2, 255 - side / 2 * 1.1, 492 + side / 2, 255 + side / 2 * 1.1)
        centre = np.array([(box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2])
        rad = np.deg2rad(angle)
        rot = np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])
        # Five landmarks of an upright template face, turned by ``angle`` about the box centre.
        template = np.array([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.25], [0.15, 0.25]]) * side
        crops.append(face_crop(box, (template @ rot.T + centre).astype(np.float32), PADS, w, h))
    straight = crop_faces_torch(frames, [0] * len(crops), crops).numpy()
    averaged = crop_faces_torch(frames, [0] * len(crops), crops, area=True).numpy()
    for k, crop in enumerate(crops):
        host = crop_face(image, crop).astype(int)
        d_avg, d_straight = np.abs(averaged[k] - host).mean(), np.abs(straight[k] - host).mean()
        assert d_avg < 2.0, (k, d_avg)
        assert d_avg < d_straight, (k, d_avg, d_straight)


def test_torch_crop_checks_its_inputs():
    with pytest.raises(ValueError, match="indices"):
        crop_faces_torch(torch.zeros((1, 8, 8, 3), dtype=torch.uint8), [0, 0], [])
    assert crop_faces_torch(torch.zeros((1, 8, 8, 3), dtype=torch.uint8), [], []).shape == (0, 96, 96, 3)
