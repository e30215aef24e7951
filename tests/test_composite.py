"""Compositing a generated face: mask shape, untouched pixels, seam strength, fallbacks."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from lipsync.errors import InputError
from lipsync.stages import composite as composite_module
from lipsync.stages.composite import CompositeResult, composite_face, feathered_face_mask, lower_face_mask
from lipsync.types import Box

SHIFT = 40  # the brightness error of the "generated" face


def synthetic_frame(h: int = 480, w: int = 640, seed: int = 1) -> np.ndarray:
    """Smooth colour gradients plus blurred noise: texture everywhere, like skin and background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx * 0.3 + 40, yy * 0.35 + 30, (xx + yy) * 0.15 + 60], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 20, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def real_or_synthetic(shared_media) -> list[tuple[str, np.ndarray, Box]]:
    cases = [("synthetic", synthetic_frame(), Box(200, 150, 400, 380))]
    try:
        path = shared_media("obama.jpg")
    except pytest.skip.Exception:
        return cases
    image = cv2.imread(str(path))
    # The face in obama.jpg (910x1137) found by a face detector, with the default 20 px chin pad.
    cases.append(("obama.jpg", image, Box(342, 95, 642, 415)))
    return cases


def shifted_crop(frame: np.ndarray, box: Box, shift: int = SHIFT) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box.as_list())
    return np.clip(frame[y1:y2, x1:x2].astype(np.int16) + shift, 0, 255).astype(np.uint8)


def moved_crop(frame: np.ndarray, box: Box) -> np.ndarray:
    """A crop whose gradients differ from the frame's (shifted in brightness and moved 3 px sideways), as a
    generated mouth's do: a brightness shift alone has the frame's own gradients, which Poisson blending
    gives back exactly."""
    return np.roll(shifted_crop(frame, box), 3, axis=1)


def support_in_frame(frame: np.ndarray, box: Box, method: str = "poisson") -> np.ndarray:
    """Where the blend of ``method`` may change the frame: each method has its own mask."""
    x1, y1, x2, y2 = (int(v) for v in box.as_list())
    full = np.zeros(frame.shape[:2], dtype=bool)
    make = lower_face_mask if method == "poisson" else feathered_face_mask
    full[y1:y2, x1:x2] = make(y2 - y1, x2 - x1) > 0
    return full


# --- the mask ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(96, 96), (320, 300), (150, 90), (37, 53)])
def test_mask_shape(h, w):
    mask = lower_face_mask(h, w)
    assert mask.shape == (h, w) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == pytest.approx(1.0)
    # Nothing on the crop's outer ring: Poisson needs frame pixels all round, the feather a soft edge.
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0.0
    # Over the lower face: most of the weight is below the middle.
    assert mask[h // 2 :].sum() > 3 * mask[: h // 2].sum()
    # Soft edges: a band of intermediate values, not a hard step.
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 0.02 * mask.size
    # Elliptical, so left-right symmetric.
    np.testing.assert_allclose(mask, mask[:, ::-1], atol=1e-5)


def test_mask_tiny_sizes_and_errors():
    for s in range(1, 12):
        mask = lower_face_mask(s, s)
        assert mask.shape == (s, s) and np.isfinite(mask).all()
        assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert lower_face_mask(8, 8).max() > 0.5
    with pytest.raises(InputError) as info:
        lower_face_mask(0, 10)
    assert info.value.field == "box"


# --- compositing ------------------------------------------------------------------------------------


def test_outside_mask_pixels_unchanged(shared_media):
    for name, frame, box in real_or_synthetic(shared_media):
        original = frame.copy()
        result = composite_face(frame, moved_crop(frame, box), box)
        assert isinstance(result, CompositeResult)
        assert result.method == "poisson", name
        assert np.array_equal(frame, original), "the input frame must not be modified"
        support = support_in_frame(frame, box)
        assert np.array_equal(result.frame[~support], frame[~support]), name
        # seamlessClone on its own does change some of those pixels; the final masking is what holds this.
        assert (np.abs(result.frame.astype(int) - frame)[support] > 0).any(), name


def test_seamlessclone_alone_leaks_outside_the_mask():
    # Why composite_face masks its result again: documents the OpenCV behaviour being guarded against.
    frame = synthetic_frame()
    box = Box(200, 150, 400, 380)
    crop = moved_crop(frame, box)
    support = lower_face_mask(230, 200) > 0
    region = frame[150:380, 200:400]
    cloned = composite_module._poisson(region, crop, support)
    assert (cloned[~support] != region[~support]).any()


def _boundary_gradient(frame: np.ndarray, composite: np.ndarray, box: Box) -> float:
    """Mean Sobel magnitude of the change (composite - frame) in a 5-pixel band around the mask's 0.5 level.

    Measured on the change, not the composite, so the frame's own texture (identical in every method)
    does not dilute the seam: this is the edge the compositing adds.
    """
    x1, y1, x2, y2 = (int(v) for v in box.as_list())
    inside = np.zeros(frame.shape[:2], dtype=np.uint8)
    inside[y1:y2, x1:x2] = lower_face_mask(y2 - y1, x2 - x1) >= 0.5
    kernel = np.ones((5, 5), np.uint8)
    band = (cv2.dilate(inside, kernel) > 0) & ~(cv2.erode(inside, kernel) > 0)
    change = (composite.astype(np.float32) - frame.astype(np.float32)).mean(axis=-1)
    gx = cv2.Sobel(change, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(change, cv2.CV_32F, 0, 1)
    return float(np.hypot(gx, gy)[band].mean())


def test_poisson_seam_is_a_third_of_hard_paste(shared_media):
    for name, frame, box in real_or_synthetic(shared_media):
        crop = shifted_crop(frame, box)
        x1, y1, x2, y2 = (int(v) for v in box.as_list())
        hard = frame.copy()
        inside = lower_face_mask(y2 - y1, x2 - x1) >= 0.5
        hard[y1:y2, x1:x2][inside] = crop[inside]
        poisson = composite_face(frame, crop, box)
        assert poisson.method == "poisson"
        g_hard = _boundary_gradient(frame, hard, box)
        g_poisson = _boundary_gradient(frame, poisson.frame, box)
        assert g_hard > 10.0, name  # the hard paste really has a seam to remove
        assert g_poisson <= g_hard / 3.0, (name, g_poisson, g_hard)
        # And the metric does tell blends apart: the plain feather leaves a clearly stronger seam.
        g_feather = _boundary_gradient(frame, composite_face(frame, crop, box, poisson=False).frame, box)
        assert g_poisson * 2 < g_feather, (name, g_poisson, g_feather)


def test_poisson_matches_frame_brightness_and_feather_keeps_the_face():
    frame = synthetic_frame()
    box = Box(200, 150, 400, 380)
    crop = shifted_crop(frame, box)
    core = np.zeros(frame.shape[:2], dtype=bool)
    core[150:380, 200:400] = lower_face_mask(230, 200) > 0.99
    poisson = composite_face(frame, crop, box)
    feather = composite_face(frame, crop, box, poisson=False)
    assert feather.method == "feather"
    delta_p = (poisson.frame.astype(float) - frame)[core].mean()
    delta_f = (feather.frame.astype(float) - frame)[core].mean()
    assert abs(delta_p) < SHIFT / 4  # Poisson takes its level from the frame around it
    assert delta_f == pytest.approx(SHIFT, abs=3)  # the feather pastes the face as given


def test_identity_crop_is_nearly_lossless():
    frame = synthetic_frame()
    box = Box(200, 150, 400, 380)
    result = composite_face(frame, frame[150:380, 200:400].copy(), box)
    mse = np.mean((result.frame.astype(float) - frame) ** 2)
    assert mse == 0.0 or 10 * np.log10(255**2 / mse) >= 45


@pytest.mark.parametrize(
    "box",
    [Box(0, 100, 200, 300), Box(100, 0, 300, 200), Box(440, 100, 640, 300), Box(100, 280, 300, 480)],
)
def test_border_touching_box_falls_back_to_feather(box, caplog):
    frame = synthetic_frame()
    with caplog.at_level(logging.DEBUG, logger="lipsync.stages.composite"):
        result = composite_face(frame, shifted_crop(frame, box), box)
    assert result.method == "feather"
    assert any("border" in r.getMessage() for r in caplog.records)
    support = support_in_frame(frame, box, "feather")
    assert np.array_equal(result.frame[~support], frame[~support])
    assert (result.frame[support] != frame[support]).any()


def test_box_partly_outside_frame_is_clipped():
    frame = synthetic_frame()
    box = Box(-50, -40, 150, 160)
    crop = np.full((200, 200, 3), 255, np.uint8)
    result = composite_face(frame, crop, box)
    assert result.method == "feather"
    full = feathered_face_mask(200, 200) > 0
    support = full[40:, 50:]
    region = result.frame[:160, :150]
    assert np.array_equal(region[~support], frame[:160, :150][~support])
    assert np.array_equal(result.frame[160:], frame[160:]) and np.array_equal(
        result.frame[:, 150:], frame[:, 150:]
    )


@pytest.mark.parametrize("solver", ["dst", "opencv"])
def test_cv2_error_falls_back_and_is_logged(monkeypatch, caplog, solver):
    def broken(*args, **kwargs):
        raise cv2.error("simulated solver failure")

    if solver == "opencv":
        monkeypatch.setattr(composite_module.cv2, "seamlessClone", broken)
    else:
        monkeypatch.setattr(composite_module, "seamless_clone", broken)
    frame = synthetic_frame()
    box = Box(200, 150, 400, 380)
    with caplog.at_level(logging.INFO, logger="lipsync.stages.composite"):
        result = composite_face(frame, shifted_crop(frame, box), box, solver=solver)
    assert result.method == "feather"
    assert any("Poisson solve failed" in r.getMessage() and "simulated" in r.getMessage()
               and r.levelno == logging.INFO for r in caplog.records)  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8, 12, 16, 24])
def test_tiny_box_works(size):
    frame = synthetic_frame()
    box = Box(300, 200, 300 + size, 200 + size)
    # Texture, not a flat patch: Poisson keeps gradients, so a flat crop would (rightly) change nothing.
    crop = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    result = composite_face(frame, crop, box)
    # Regions too small for a meaningful Poisson solve are feathered, so the face is not erased.
    assert result.method == ("poisson" if size >= 24 else "feather")
    assert result.frame.shape == frame.shape and result.frame.dtype == np.uint8
    support = support_in_frame(frame, box, result.method)
    assert np.array_equal(result.frame[~support], frame[~support])
    if size >= 8:
        assert (result.frame[support] != frame[support]).any()


def test_custom_mask_is_honoured():
    frame = synthetic_frame()
    box = Box(200, 150, 300, 250)
    mask = np.zeros((100, 100), np.float32)
    mask[40:60, 40:60] = 1.0
    result = composite_face(frame, shifted_crop(frame, box), box, mask=mask, poisson=False)
    changed = np.any(result.frame != frame, axis=-1)
    assert changed[190:210, 240:260].all() and changed.sum() == 400


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"generated_crop": np.zeros((10, 10, 3), np.uint8)}, "generated_crop"),
        ({"generated_crop": np.zeros((100, 100, 3), np.float32)}, "generated_crop"),
        ({"frame": np.zeros((480, 640), np.uint8)}, "frame"),
        ({"box": Box(300, 300, 300, 400)}, "box"),
        ({"box": Box(1000, 1000, 1100, 1100)}, "box"),
        ({"box": Box(float("nan"), 0, 100, 100)}, "box"),
        ({"mask": np.ones((5, 5), np.float32)}, "mask"),
    ],
)
def test_invalid_inputs(kwargs, field):
    args = {
        "frame": synthetic_frame(),
        "generated_crop": np.zeros((100, 100, 3), np.uint8),
        "box": Box(200, 150, 300, 250),
    }
    args.update(kwargs)
    mask = args.pop("mask", None)
    with pytest.raises(InputError) as info:
        composite_face(args["frame"], args["generated_crop"], args["box"], mask=mask)
    assert info.value.field == field


@pytest.mark.parametrize("face", [120, 230])
def test_feathered_fallback_seam_is_soft(face):
    """Regression (issue 13, defect 22): where Poisson falls back (here: the box touches the frame's left
    border), a flat grey face 86 levels brighter than a flat frame must fade in over a ramp that grows
    with the face, not jump within a dozen pixels. Measured like the Poisson seam test, and by profile."""
    w = int(face * 0.87)
    frame = np.full((480, 640, 3), 100, np.uint8)
    box = Box(0, 100, w, 100 + face)
    crop = np.full((face, w, 3), 186, np.uint8)
    result = composite_face(frame, crop, box)
    assert result.method == "feather"
    hard = frame.copy()
    inside = lower_face_mask(face, w) >= 0.5
    hard[100 : 100 + face, :w][inside] = crop[inside]
    g_hard = _boundary_gradient(frame, hard, box)
    g_feather = _boundary_gradient(frame, result.frame, box)
    assert g_feather <= g_hard / 3.2, (g_feather, g_hard)  # the old 3-pixel feather: g_hard / 1.8
    change = result.frame.astype(float).mean(axis=-1) - 100.0
    # The steepest step between neighbouring pixels anywhere: the 86 levels spread over >= face/9 px.
    steepest = max(np.abs(np.diff(change, axis=0)).max(), np.abs(np.diff(change, axis=1)).max())
    assert steepest <= 86 * 9 / face, steepest
    # Down the middle below the mouth, 10 % -> 90 % of the rise takes at least a tenth of the face.
    column = change[100 + int(0.66 * face) : 100 + face, w // 2]
    rise = int(np.argmax(column < 0.1 * 86)) - int(np.argmax(column < 0.9 * 86))
    assert rise >= face / 10, rise
    # And the mouth itself is the generated face, not a blend with the frame.
    mouth = change[100 + int(0.7 * face) : 100 + int(0.8 * face), int(0.4 * w) : int(0.6 * w)]
    assert mouth.min() >= 0.95 * 86


@pytest.mark.parametrize("solver", ["opencv", "dst"])
@pytest.mark.parametrize(("h", "w"), [(241, 190), (64, 48), (30, 400), (292, 181)])
def test_poisson_on_the_mask_rectangle_equals_the_whole_region_solve(h, w, solver):
    """The solve runs on the mask's (grown) bounding rectangle plus a margin; inside the mask it must give
    the pixels of seamlessClone over the whole region with the same mask: exactly with seamlessClone
    itself, within 1 grey level with the default solver (on noise, the hardest case for its float32)."""
    rng = np.random.default_rng(h)
    region = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    support = lower_face_mask(h, w) > 0
    binary = support.astype(np.uint8) * 255
    x, y, bw, bh = composite_module._grown_rect(binary, cv2.boundingRect(binary))
    binary[y, x] = binary[y + bh - 1, x + bw - 1] = 255  # as _poisson marks a grown rectangle
    whole = cv2.seamlessClone(crop, region, binary, (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
    got = composite_module._poisson(region, crop, support, solver)
    assert got.shape == region.shape
    if solver == "opencv":
        np.testing.assert_array_equal(got[support], whole[support])
    else:
        diff = np.abs(got[support].astype(int) - whole[support].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.05


def test_dft_friendly_side_grows_a_little_to_a_cheaper_length():
    side = composite_module.dft_friendly_side
    cost = composite_module._dft_cost
    assert side(179, 100) == 181  # 2*178 = 2^3 89 -> 2*180 = 2^3 3^2 5
    assert side(168, 100) == 169  # 2*167 (prime 167) -> 2*168 = 2^4 3 7
    assert side(181, 100) == 181  # already cheap
    assert side(179, 0) == 179  # no room: unchanged
    assert cost(2 * 166) > 3 * cost(2 * 168)  # a prime factor costs several times smooth radices
    for n in range(3, 700):
        got = side(n, 1000)
        reach = max(4, int(n * 0.04))
        assert n <= got <= n + reach, n
        assert cost(2 * (got - 1)) == min(cost(2 * (m - 1)) for m in range(n, n + reach + 1)), n


def test_grown_rect_keeps_clear_of_the_mask_and_inside_the_region():
    support = np.ones((50, 50), bool)  # a full mask: no corner is clear of it
    binary = support.astype(np.uint8) * 255
    binary[0, :] = binary[-1, :] = binary[:, 0] = binary[:, -1] = 0
    tight = cv2.boundingRect(binary)
    assert composite_module._grown_rect(binary, tight) == tight
    binary = (lower_face_mask(284, 181) > 0).astype(np.uint8) * 255
    tight = cv2.boundingRect(binary)
    x, y, w, h = composite_module._grown_rect(binary, tight)
    assert (w, h) != tight[2:] and w >= tight[2] and h >= tight[3]
    assert x >= 1 and y >= 1 and x + w <= 181 - 1 and y + h <= 284 - 1
    assert x <= tight[0] and y <= tight[1] and x + w >= tight[0] + tight[2] and y + h >= tight[1] + tight[3]


def test_grown_poisson_domain_moves_real_faces_by_few_grey_levels(shared_media, monkeypatch):
    """Against the tight rectangle (today's seamlessClone domain): at most 3 grey levels anywhere, a
    fraction of one on average, on real faces at several sizes with a brightness mismatch to spread."""
    photos = []
    for name, box in (("obama.jpg", (342, 95, 642, 415)), ("biden.jpg", None)):
        try:
            image = cv2.imread(str(shared_media(name)))
        except pytest.skip.Exception:
            continue
        h, w = image.shape[:2]
        photos.append((image, box or (w // 4, h // 5, 3 * w // 4, 4 * h // 5)))
    if not photos:
        pytest.skip("needs ../shared/media")
    grew = 0
    for image, (x1, y1, x2, y2) in photos:
        for scale in (0.45, 0.6, 0.8, 1.0):
            frame = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            box = Box(round(x1 * scale), round(y1 * scale), round(x2 * scale), round(y2 * scale))
            # The "generated" face: the same face a little off in place and brightness, as Wav2Lip's is.
            bx1, by1, bx2, by2 = (int(v) for v in box.as_list())
            shifted = frame[by1 + 3 : by2 + 3, bx1 - 2 : bx2 - 2].astype(np.int16) + 12
            crop = np.clip(shifted, 0, 255).astype(np.uint8)
            grown = composite_face(frame, crop, box)
            with monkeypatch.context() as m:
                m.setattr(composite_module, "_grown_rect", lambda _binary, rect: rect)
                tight = composite_face(frame, crop, box)
            assert grown.method == tight.method == "poisson"
            diff = np.abs(grown.frame.astype(int) - tight.frame)[by1:by2, bx1:bx2]
            assert diff.max() <= 3, (scale, diff.max())
            assert diff.mean() <= 0.3, (scale, diff.mean())
            grew += bool(diff.any())
    assert grew >= len(photos)  # the domain did grow (and so moved pixels) in most of these cases
