"""Unit tests of the pipeline's own stages: Wav2Lip prepare/forward/postprocess, GFPGAN align/paste, plan frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipsync.stages.enhance import (
    ALIGN_SIZE,
    FFHQ_TEMPLATE_512,
    FaceEnhancer,
    align_face,
    paste_face,
    similarity_transform,
)
from lipsync.stages.frames import blend_frames, point_for, render_plan_frame, sources_needed
from lipsync.stages.lipsync import (
    FACE_SIZE,
    MouthGenerator,
    Wav2LipGenerator,
    build_inputs,
    default_batch_size,
    postprocess_face,
    prepare_face,
)
from lipsync.types import Box, PlanFrame, Track, TrackPoint
from pipeline_fixtures import IdentityGenerator, psnr

# --- Wav2Lip stage --------------------------------------------------------------------------------------


def test_prepare_and_postprocess_geometry():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[30:90, 40:100] = (10, 20, 30)
    box = Box(40, 30, 100, 90)
    face = prepare_face(frame, box)
    assert face.shape == (FACE_SIZE, FACE_SIZE, 3)
    assert (face == (10, 20, 30)).all()
    back = postprocess_face(face, box)
    assert back.shape == (60, 60, 3)


def test_build_inputs_masks_lower_half_first_then_reference_bgr():
    rng = np.random.default_rng(0)
    faces = rng.integers(1, 255, (2, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    x = build_inputs(faces)
    assert x.shape == (2, 6, FACE_SIZE, FACE_SIZE) and x.dtype == np.float32
    # channels 0-2: the masked copy (upper half kept, lower half zero), 3-5: the reference, both BGR / 255
    np.testing.assert_allclose(
        x[:, :3, : FACE_SIZE // 2], faces[:, : FACE_SIZE // 2].transpose(0, 3, 1, 2) / 255.0
    )
    assert (x[:, :3, FACE_SIZE // 2 :] == 0).all()
    np.testing.assert_allclose(x[:, 3:], faces.transpose(0, 3, 1, 2) / 255.0)
    assert x.max() <= 1.0


class _EchoNet(nn.Module):
    """Returns the reference half of its face input; raises OOM above ``limit`` items."""

    def __init__(self, limit: int = 1 << 30) -> None:
        super().__init__()
        self.limit = limit
        self.seen: list[int] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, mel, face):
        assert mel.shape[1:] == (1, 80, 16) and face.shape[1:] == (6, FACE_SIZE, FACE_SIZE)
        if face.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.seen.append(face.shape[0])
        return face[:, 3:] * self.scale


def test_generator_round_trips_reference_and_batches():
    net = _EchoNet()
    gen = Wav2LipGenerator(net, "cpu", batch_size=4)
    assert isinstance(gen, MouthGenerator)
    faces = np.random.default_rng(1).integers(0, 256, (10, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    out = gen(faces, np.zeros((10, 80, 16), np.float32))
    np.testing.assert_array_equal(out, faces)
    assert net.seen == [4, 4, 2]


def test_generator_halves_batch_on_oom():
    net = _EchoNet(limit=3)
    gen = Wav2LipGenerator(net, "cpu", batch_size=16)
    faces = np.random.default_rng(2).integers(0, 256, (9, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    out = gen(faces, np.zeros((9, 80, 16), np.float32))
    np.testing.assert_array_equal(out, faces)
    assert gen.batch_size == 2 and all(n <= 3 for n in net.seen) and sum(net.seen) == 9


def test_generator_gives_up_at_batch_one():
    gen = Wav2LipGenerator(_EchoNet(limit=0), "cpu", batch_size=4)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        gen(np.zeros((2, FACE_SIZE, FACE_SIZE, 3), np.uint8), np.zeros((2, 80, 16), np.float32))


def test_other_errors_are_not_swallowed():
    class Broken(_EchoNet):
        def forward(self, mel, face):
            raise RuntimeError("shape mismatch")

    gen = Wav2LipGenerator(Broken(), "cpu", batch_size=4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gen(np.zeros((2, FACE_SIZE, FACE_SIZE, 3), np.uint8), np.zeros((2, 80, 16), np.float32))
    assert gen.batch_size == 4


def test_default_batch_sizes():
    assert default_batch_size("cpu") == 16
    assert default_batch_size("cuda") == 128
    assert Wav2LipGenerator(_EchoNet(), "cpu").batch_size == 16


def test_real_wav2lip_random_weights_forward():
    from lipsync.nets import Wav2Lip

    torch.manual_seed(0)
    gen = Wav2LipGenerator(Wav2Lip(), "cpu", batch_size=2)
    faces = np.random.default_rng(3).integers(0, 256, (3, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    out = gen(faces, np.random.default_rng(4).uniform(-4, 4, (3, 80, 16)).astype(np.float32))
    assert out.shape == (3, FACE_SIZE, FACE_SIZE, 3) and out.dtype == np.uint8


# --- enhance stage --------------------------------------------------------------------------------------


def _similar(points: np.ndarray, scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return (points @ np.array([[c, s], [-s, c]]) + (tx, ty)).astype(np.float32)


def test_similarity_transform_maps_landmarks_to_template():
    landmarks = _similar(FFHQ_TEMPLATE_512, 0.3, 0.2, 100.0, 40.0)
    affine = similarity_transform(landmarks)
    mapped = np.hstack([landmarks, np.ones((5, 1), np.float32)]) @ affine.T
    np.testing.assert_allclose(mapped, FFHQ_TEMPLATE_512, atol=1e-2)


def _textured_frame(h=240, w=320):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [100 + 60 * np.sin(xx / 9), 120 + 50 * np.cos(yy / 7), 90 + 40 * np.sin((xx + yy) / 13)], -1
    )
    return img.astype(np.uint8)


def test_align_then_paste_identity_restores_face_and_keeps_outside():
    frame = _textured_frame()
    landmarks = _similar(FFHQ_TEMPLATE_512, 0.25, 0.1, 110.0, 50.0)
    aligned = align_face(frame, landmarks)
    assert aligned.image.shape == (ALIGN_SIZE, ALIGN_SIZE, 3)
    out = paste_face(frame.copy(), aligned.image, aligned.affine)
    # Outside the warped square nothing moves.
    inv = np.linalg.inv(np.vstack([aligned.affine, [0, 0, 1]]))
    corners = np.array([[0, 0, 1], [512, 0, 1], [0, 512, 1], [512, 512, 1]]) @ inv.T
    x2, y2 = int(np.ceil(corners[:, 0].max())), int(np.ceil(corners[:, 1].max()))
    assert (out[y2 + 1 :] == frame[y2 + 1 :]).all() and (out[:, x2 + 1 :] == frame[:, x2 + 1 :]).all()
    # Inside, an identity restorer gives the face back up to two bilinear resamplings.
    assert psnr(out, frame) > 30


def test_paste_puts_restored_content_where_the_face_is():
    frame = np.full((240, 320, 3), 100, np.uint8)
    landmarks = _similar(FFHQ_TEMPLATE_512, 0.25, 0.0, 100.0, 40.0)
    aligned = align_face(frame, landmarks)
    white = np.full_like(aligned.image, 255)
    out = paste_face(frame.copy(), white, aligned.affine)
    nose = landmarks[2].round().astype(int)
    assert out[nose[1], nose[0]].min() > 240  # centre of the face fully replaced
    assert (out[0, 0] == 100).all() and (out[-1, -1] == 100).all()


def test_face_enhancer_only_touches_given_faces():
    calls = []

    class Brighten:
        batch_size = 2

        def __call__(self, faces):
            calls.append(faces.shape)
            return np.clip(faces.astype(np.int16) + 50, 0, 255).astype(np.uint8)

    frames = [np.full((240, 320, 3), 80, np.uint8) for _ in range(3)]
    lm = _similar(FFHQ_TEMPLATE_512, 0.2, 0.0, 100.0, 60.0)
    assert FaceEnhancer(Brighten())(frames, [(0, lm), (2, lm)]) == 2
    assert calls == [(2, 512, 512, 3)]
    assert frames[0].max() > 80 and frames[2].max() > 80 and (frames[1] == 80).all()


# --- plan frames ----------------------------------------------------------------------------------------


def _point(frame: int, box: Box) -> TrackPoint:
    lm = np.tile(np.array(box.center, np.float32), (5, 1))
    return TrackPoint(frame, box, lm, 0.9, False)


def test_render_plan_frame_blends_before_generation():
    frames = [np.full((4, 4, 3), v, np.uint8) for v in (0, 100, 200)]
    assert (render_plan_frame(frames.__getitem__, PlanFrame(1)) == 100).all()
    blended = render_plan_frame(frames.__getitem__, PlanFrame(0, 2, 0.25))
    assert (blended == 50).all()
    assert (blend_frames(frames[1], frames[2], 0.5) == 150).all()
    out = render_plan_frame(frames.__getitem__, PlanFrame(1))
    out[:] = 0
    assert (frames[1] == 100).all()  # a copy, safe to paint on


def test_point_for_interpolates_boxes_in_blends_and_passes_through_when_missing():
    track = Track("a", "A", {0: _point(0, Box(0, 0, 10, 10)), 4: _point(4, Box(20, 10, 30, 20))})
    assert point_for(track, PlanFrame(0)).box == Box(0, 0, 10, 10)
    assert point_for(track, PlanFrame(1)) is None
    mid = point_for(track, PlanFrame(0, 4, 0.5))
    assert mid is not None and mid.box == Box(10, 5, 20, 15)
    np.testing.assert_allclose(mid.landmarks[0], (15, 10))
    assert point_for(track, PlanFrame(0, 1, 0.5)) is None  # missing in one source


def test_sources_needed():
    assert sources_needed([PlanFrame(0), PlanFrame(3), PlanFrame(1, 5, 0.5)]) == 6
    assert sources_needed([]) == 0


def test_identity_double_satisfies_protocol():
    assert isinstance(IdentityGenerator(), MouthGenerator)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_wav2lip_fp16_on_cuda_matches_fp32_on_cpu():
    from lipsync.nets import Wav2Lip

    torch.manual_seed(0)
    net = Wav2Lip()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    faces = np.random.default_rng(5).integers(0, 256, (8, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    mels = np.random.default_rng(6).uniform(-4, 4, (8, 80, 16)).astype(np.float32)
    cpu = Wav2LipGenerator(net, "cpu", batch_size=8)(faces, mels)
    net = Wav2Lip()  # the CPU generator folded the first copy's BatchNorms in place
    net.load_state_dict(state)
    gpu_gen = Wav2LipGenerator(net, "cuda", batch_size=8, fp16=True)
    assert gpu_gen.dtype == torch.float16
    gpu = gpu_gen(faces, mels)
    assert np.abs(cpu.astype(int) - gpu.astype(int)).mean() < 2.0


class _FailingWriter:
    """A VideoWriter stand-in that fails on its ``fail_at``-th frame, as an encoder error would."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.written = fail_at, 0

    def write(self, frame: np.ndarray) -> None:
        if self.written == self.fail_at:
            raise RuntimeError("encoder broke")
        self.written += 1


def test_background_encoder_writes_in_order_and_joins():
    from lipsync.stages.encode import BackgroundEncoder

    seen = []

    class Writer:
        def write(self, frame):
            seen.append(int(frame[0, 0, 0]))

    encoder = BackgroundEncoder(Writer())  # type: ignore[arg-type]
    for start in range(0, 12, 4):
        encoder.put([np.full((2, 2, 3), i, np.uint8) for i in range(start, start + 4)])
    encoder.join()
    assert seen == list(range(12))
    assert encoder.busy_seconds >= 0.0


def test_background_encoder_hands_its_error_to_the_caller_and_stops():
    from lipsync.stages.encode import BackgroundEncoder

    writer = _FailingWriter(fail_at=5)
    encoder = BackgroundEncoder(writer)  # type: ignore[arg-type]
    batch = [np.zeros((2, 2, 3), np.uint8)] * 4
    with pytest.raises(RuntimeError, match="encoder broke"):
        for _ in range(50):  # a later put (or the join) raises the worker's error
            encoder.put(batch)
        encoder.join()
    assert writer.written == 5  # nothing after the failing frame was written
    encoder.stop()  # the error path: returns, raising nothing
    assert not encoder._thread.is_alive()
    with pytest.raises(RuntimeError, match="encoder broke"):
        encoder.join()
