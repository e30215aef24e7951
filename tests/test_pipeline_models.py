"""The pipeline with its real parts: the Wav2Lip and GFPGAN networks (seeded random weights saved in the
public files' formats and loaded through lipsync.models), and the real dlib face backend on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared_file
from lipsync.config import Settings
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from lipsync.stages.enhance import GFPGANRestorer, similarity_transform
from lipsync.stages.frames import point_for
from lipsync.types import Box, Character
from pipeline_fixtures import (
    PALETTE,
    ColorFaceBackend,
    FaceSpec,
    MouthMarkGenerator,
    background,
    decode_frames,
    draw_face,
    face_support,
    moving_box,
    reencode_reference,
    stream_durations,
    write_photo_video,
    write_random_gfpgan,
    write_random_wav2lip,
    write_reference_image,
    write_speechlike_wav,
    write_synthetic_video,
)

PADS = (0, 20, 0, 0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"wav2lip": write_random_wav2lip(d / "wav2lip_gan.pth", seed=0)}


def _settings(tmp_path: Path, **kw) -> Settings:
    # offline with an empty models dir: anything not given by path would raise, never download
    return Settings(device="cpu", offline=True, models_dir=tmp_path / "models", **kw)


def test_real_wav2lip_network_with_random_weights(tmp_path, checkpoints):
    video = write_synthetic_video(
        tmp_path / "v.mp4",
        [FaceSpec("red", moving_box(40, 20, 60, 76, dx=0.5))],
        width=160,
        height=120,
        seconds=0.4,
    )
    audio = write_speechlike_wav(tmp_path / "a.wav", 0.4)
    pipe = LipSyncPipeline(
        _settings(tmp_path, wav2lip_checkpoint=checkpoints["wav2lip"]), face_backend=ColorFaceBackend()
    )
    options = LipSyncOptions(enhance="off", wav2lip_batch_size=4, loop_mode="none", crf=0)
    request = LipSyncRequest(video, audio, tmp_path / "out.mp4", options=options)
    result = pipe(request)
    generator = pipe.get_generator()
    from lipsync.stages.wav2lip_mnn import MnnMouthGenerator  # the CPU default

    assert isinstance(generator, MnnMouthGenerator) and generator.device == "cpu"
    assert result.stats.batch_size == 4 and result.stats.device == "cpu"
    assert result.stats.characters["face"].frames_synced == 10
    out = decode_frames(result.output)
    ref = reencode_reference(video, result.plan, tmp_path / "ref.mp4", crf=0)
    assert len(out) == 10
    changed_inside = 0
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        box = point_for(result.tracks[0], result.plan[i]).box.padded(PADS, 160, 120)
        inside = face_support(o.shape, [box])
        diff = np.abs(o.astype(np.int16) - r.astype(np.int16)).max(axis=2)
        assert diff[~face_support(o.shape, [box], dilate=1)].max() <= 2, f"frame {i} changed outside the face"
        changed_inside += int((diff[inside] > 10).sum())
    assert changed_inside > 100  # a random network draws something else than the input


@pytest.mark.slow
def test_enhance_with_random_gfpgan_changes_only_synced_faces(tmp_path):
    # GFPGAN costs seconds per face on a CPU: one frame (a still image) with two faces, one of them requested.
    gfpgan = write_random_gfpgan(tmp_path / "GFPGANv1.4.pth", seed=0)
    red_box, blue_box = Box(40, 50, 120, 150), Box(210, 60, 280, 150)
    img = background(320, 240)
    draw_face(img, red_box, PALETTE["red"])
    draw_face(img, blue_box, PALETTE["blue"])
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), img)
    audio = write_speechlike_wav(tmp_path / "a.wav", 0.04)
    red = Character("red", "Red", (write_reference_image(tmp_path / "red.png", "red"),))
    pipe = LipSyncPipeline(
        _settings(tmp_path, gfpgan_checkpoint=gfpgan),
        generator=MouthMarkGenerator(),
        face_backend=ColorFaceBackend(),
    )
    result = pipe(LipSyncRequest(still, audio, tmp_path / "out.mp4", (red,), LipSyncOptions(enhance="on", crf=0)))
    assert isinstance(pipe.get_enhancer().restorer, GFPGANRestorer)
    assert result.stats.frames == 1 and result.stats.enhanced == 1
    (out,) = decode_frames(result.output)
    without = LipSyncPipeline(
        _settings(tmp_path), generator=MouthMarkGenerator(), face_backend=ColorFaceBackend()
    )
    (plain,) = decode_frames(
        without(LipSyncRequest(still, audio, tmp_path / "plain.mp4", (red,), LipSyncOptions(enhance="off", crf=0))).output
    )
    # The aligned 512 square mapped back into the frame bounds everything GFPGAN may touch...
    point = result.tracks[0].get(0)
    inverse = np.linalg.inv(np.vstack([similarity_transform(point.landmarks), [0, 0, 1]]))
    corners = np.array([[0, 0, 1], [512, 0, 1], [0, 512, 1], [512, 512, 1]]) @ inverse.T
    x1, y1 = np.floor(corners[:, :2].min(0)).astype(int) - 2
    x2, y2 = np.ceil(corners[:, :2].max(0)).astype(int) + 2
    square = np.zeros(out.shape[:2], bool)
    square[max(0, y1) : y2, max(0, x1) : x2] = True
    diff = np.abs(out.astype(np.int16) - plain.astype(np.int16)).max(axis=2)
    assert diff[~square].max() <= 2, "enhancement reached outside the synced face"
    assert not square[int(blue_box.y1) : int(blue_box.y2), int(blue_box.x1) : int(blue_box.x2)].any()
    # ...and the synced face itself was replaced by the (random) network's output.
    assert (diff[int(red_box.y1) : int(red_box.y2), int(red_box.x1) : int(red_box.x2)] > 10).mean() > 0.2


@pytest.mark.slow
def test_dlib_backend_end_to_end_on_a_real_photo(tmp_path):
    video = write_photo_video(
        tmp_path / "obama.mp4",
        shared_file("obama.jpg"),
        width=320,
        height=240,
        seconds=1.2,
        center=(0.54, 0.25),
    )
    audio = write_speechlike_wav(tmp_path / "a.wav", 1.2)
    obama = Character("obama", "Barack Obama", (shared_file("obama2.jpg"),))
    pipe = LipSyncPipeline(_settings(tmp_path, face_backend="dlib"), generator=MouthMarkGenerator())
    options = LipSyncOptions(enhance="off", loop_mode="none", crf=0)
    request = LipSyncRequest(video, audio, tmp_path / "out.mp4", (obama,), options)
    result = pipe(request)
    stats = result.stats.characters["obama"]
    assert stats.frames_synced == result.stats.frames == 30 and stats.frames_passed_through == 0
    out = decode_frames(result.output)
    ref = reencode_reference(video, result.plan, tmp_path / "ref.mp4", crf=0)
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        point = result.tracks[0].get(i)
        assert point.similarity >= 0.5
        padded = point.box.padded(PADS, 320, 240)
        diff = np.abs(o.astype(np.int16) - r.astype(np.int16)).max(axis=2)
        assert diff[~face_support(o.shape, [padded], dilate=1)].max() <= 2
        # the white mouth bar lands inside the face box, below the eyes
        ys, _ = np.nonzero(diff > 60)
        assert len(ys) > 20 and ys.min() > point.landmarks[:2, 1].mean()
    frames, video_s, audio_s = stream_durations(result.output)
    assert frames == 30 and abs(video_s - audio_s) <= 1 / 25
