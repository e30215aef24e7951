"""The host Poisson solve (stages.poisson_host, the default ``poisson_solver``) against cv2.seamlessClone:
the same problem, so the same pixels within 1 grey level, on synthetic crops and on faces of the shared
photos; and the composite's use of it (solver choice, in-place paste, masks made once)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.errors import InputError
from lipsync.stages import align_crop
from lipsync.stages.align_crop import crop_mask, face_crop, paste_face
from lipsync.stages.composite import composite_face, lower_face_mask
from lipsync.stages.poisson_host import _dst2, seamless_clone
from lipsync.types import Box
from poisson_fixtures import crop_pair, cv2_clone


def _agree(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    diff = np.abs(a.astype(int) - b.astype(int))
    return int(diff.max()), float(diff.mean())


@pytest.mark.parametrize("size", [(60, 50), (97, 131), (150, 120), (284, 181), (179, 169), (401, 299)])
def test_agrees_with_seamless_clone(size):
    h, w = size
    src, dest = crop_pair(h, w, seed=h)
    mask = (lower_face_mask(h, w) > 0).astype(np.uint8) * 255
    ref = cv2_clone(src, dest, mask)
    out = seamless_clone(src, dest, mask)
    worst, mean = _agree(ref, out)
    assert worst <= 1 and mean < 0.02
    assert (ref != dest).mean() > 0.3  # the clone really moved pixels (a no-op would not agree)


@pytest.mark.parametrize("photo", ["obama.jpg", "biden.jpg", "rose_leslie1.jpg"])
def test_agrees_with_seamless_clone_on_real_faces(shared_media, photo):
    frame = cv2.imread(str(shared_media(photo)))
    h, w = frame.shape[:2]
    # A face-sized region in the middle of the photo and a blurred, brightened "generated" face over it.
    bh, bw = h // 3, w // 4
    y1, x1 = h // 3, (w - bw) // 2
    region = frame[y1 : y1 + bh, x1 : x1 + bw]
    face = cv2.add(cv2.GaussianBlur(region, (9, 9), 3), np.full_like(region, 25))
    mask = (lower_face_mask(bh, bw) > 0).astype(np.uint8) * 255
    worst, mean = _agree(cv2_clone(face, region, mask), seamless_clone(face, region, mask))
    assert worst <= 1 and mean < 0.02


def test_sine_transform_matches_its_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 11, 2)).astype(np.float32)  # (h, w, channels)
    j = np.arange(1, 8)[:, None] * np.arange(1, 8)[None, :]
    sy = 2.0 * np.sin(np.pi * j / 8)
    i = np.arange(1, 12)[:, None] * np.arange(1, 12)[None, :]
    sx = 2.0 * np.sin(np.pi * i / 12)
    expected = np.einsum("ky,yxc,xl->klc", sy, x.astype(np.float64), sx)
    got = _dst2(x.copy())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_nothing_to_clone_returns_the_frame_and_bad_shapes_are_refused():
    src, dest = crop_pair(40, 40, seed=0)
    ring = np.zeros((40, 40), np.uint8)
    ring[0, :] = 255  # only on the outer ring, which never clones
    out = seamless_clone(src, dest, ring)
    assert np.array_equal(out, dest) and out is not dest
    with pytest.raises(InputError, match="mask"):
        seamless_clone(src, dest, np.ones((30, 40), np.uint8))
    with pytest.raises(InputError):
        seamless_clone(src, dest[:, :39], ring[:, :39])


def test_the_two_solvers_composite_within_a_grey_level_and_only_inside_the_mask(shared_media):
    frame = cv2.imread(str(shared_media("obama.jpg")))
    box = Box(300, 150, 460, 350)
    region = frame[150:350, 300:460]
    face = cv2.add(cv2.GaussianBlur(region, (9, 9), 3), np.full_like(region, 25))
    fast = composite_face(frame, face, box)
    ref = composite_face(frame, face, box, solver="opencv")
    assert fast.method == ref.method == "poisson"
    worst, _ = _agree(fast.frame, ref.frame)
    assert worst <= 1
    outside = np.ones(frame.shape[:2], bool)
    outside[150:350, 300:460] = ~(lower_face_mask(200, 160) > 0)
    assert np.array_equal(fast.frame[outside], frame[outside])
    assert (fast.frame != frame).any(axis=-1).sum() > 5000


def test_inplace_paste_writes_into_the_frame_and_equals_the_copying_one(shared_media):
    frame = cv2.imread(str(shared_media("biden.jpg")))
    box = Box(200, 120, 360, 320)
    face = cv2.add(frame[120:320, 200:360], np.full((200, 160, 3), 20, np.uint8))
    copied = composite_face(frame, face, box)
    target = frame.copy()
    inplace = composite_face(target, face, box, inplace=True)
    assert inplace.frame is target
    assert np.array_equal(inplace.frame, copied.frame)
    assert not np.array_equal(frame, copied.frame)  # the copying call left its input alone


def test_feather_mask_is_made_only_when_the_feather_is_used(shared_media):
    frame = cv2.imread(str(shared_media("obama.jpg")))
    h, w = frame.shape[:2]
    lm = np.array([[360, 220], [420, 220], [390, 260], [365, 295], [415, 295]], np.float32)
    crop = face_crop(Box(320, 160, 460, 340), lm, (0, 20, 0, 0), w, h)
    assert crop is not None
    generated = np.full((96, 96, 3), 128, np.uint8)
    calls = []

    def soft():
        calls.append(1)
        return crop_mask(crop, feather=True)

    assert paste_face(frame, generated, crop, crop_mask(crop), feather_mask=soft).method == "poisson"
    assert calls == []
    assert paste_face(frame, generated, crop, crop_mask(crop), poisson=False, feather_mask=soft).method == "feather"
    assert calls == [1]


def test_crop_masks_are_kept_read_only():
    align_crop._shape_mask.cache_clear()
    crop = align_crop.FaceCrop(np.array([[1.0, 0, -10], [0, 1.0, -20]]), 120, 150, Box(10, 20, 130, 170), 0.0)
    first = crop_mask(crop, shrink=0.1)
    again = crop_mask(crop, shrink=0.1)
    assert first is again and not first.flags.writeable
    assert align_crop._shape_mask.cache_info().hits == 1
    np.testing.assert_array_equal(first, align_crop._shape_mask.__wrapped__(150, 120, 0.1, False))
    # With an occlusion mask the product is a fresh array of its own.
    occluded = crop_mask(crop, shrink=0.1, occlusion=np.ones((150, 120), np.float32))
    assert occluded is not first and occluded.flags.writeable
