"""LipSyncPipeline end to end on synthetic videos: geometry and plumbing (not lip shapes).

Faces are drawn cartoons of one palette colour each, found by ColorFaceBackend (deterministic, fast) and
tracked by the real tracker; mouths come from generator test doubles going through the same stage
interface as Wav2Lip. Outputs are compared with the input decoded, laid out by the loop plan and re-encoded
with the same encoder settings, so only the pipeline's own changes remain.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED_MEDIA
from lipsync.config import Settings
from lipsync.errors import InputError, MediaNotFound, NoFaceFound
from lipsync.options import LipSyncOptions, parse_options
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from lipsync.stages.frames import point_for
from lipsync.stages.looping import plan_loop
from lipsync.types import Box, Character
from pipeline_fixtures import (
    BrightnessGenerator,
    ColorFaceBackend,
    FaceSpec,
    IdentityGenerator,
    MouthMarkGenerator,
    background,
    draw_face,
    face_support,
    moving_box,
    psnr,
    reencode_reference,
    stream_durations,
    write_reference_image,
    write_speechlike_wav,
    write_synthetic_video,
)

W, H, FPS = 256, 192, 25
PADS = (0, 20, 0, 0)
# Geometry tests encode losslessly (x264 crf 0), so "unchanged" can be checked to the pixel: at lossy
# settings a change inside the face moves the encoder's decisions elsewhere too (up to ~25 levels here).
LOSSLESS = 0
RED = FaceSpec("red", moving_box(40, 30, 64, 84, dx=0.6, dy=0.2))
BLUE = FaceSpec("blue", moving_box(150, 40, 60, 80, dx=-0.4))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pipeline_media")
    out = {
        "one_face": write_synthetic_video(d / "one_face.mp4", [RED], width=W, height=H, fps=FPS, seconds=2.0),
        "two_faces": write_synthetic_video(
            d / "two_faces.mp4", [RED, BLUE], width=W, height=H, fps=FPS, seconds=2.0
        ),
        "three_s": write_synthetic_video(
            d / "three_s.mp4", [RED], width=160, height=120, fps=FPS, seconds=3.0
        ),
        "audio_2s": write_speechlike_wav(d / "a2.wav", 2.0),
        "audio_3s": write_speechlike_wav(d / "a3.wav", 3.2),
        "red_ref": write_reference_image(d / "red.png", "red"),
        "blue_ref": write_reference_image(d / "blue.png", "blue"),
        "green_ref": write_reference_image(d / "green.png", "green"),
    }
    shared_speech = SHARED_MEDIA / "speech_en_16k_stereo_8s.wav"
    out["speech_8s"] = shared_speech if shared_speech.exists() else write_speechlike_wav(d / "a8.wav", 8.0)
    return out


def character(cid: str, ref: Path) -> Character:
    return Character(cid, cid.title(), (ref,))


def run(tmp_path: Path, video: Path, audio: Path, generator, characters=(), *, backend=None, **kw):
    pipe = LipSyncPipeline(Settings(), generator=generator, face_backend=backend or ColorFaceBackend())
    events: list[tuple[str, int, int]] = []
    options = LipSyncOptions(**{"enhance": "off", "pads": list(PADS), **kw})
    request = LipSyncRequest(video, audio, tmp_path / "out.mp4", tuple(characters), options)
    result = pipe(request, progress=lambda *e: events.append(e))
    return result, events


def decoded(path: Path) -> list[np.ndarray]:
    from pipeline_fixtures import decode_frames

    return decode_frames(path)


def boxes_for(result, index: int, width: int, height: int) -> list[Box]:
    """The padded boxes the pipeline synced in output frame ``index``."""
    out = []
    for track in result.tracks:
        point = point_for(track, result.plan[index])
        if point is not None:
            out.append(point.box.padded(PADS, width, height))
    return out


# --- identity and geometry ------------------------------------------------------------------------------


def test_identity_generator_reproduces_the_input(tmp_path, media):
    # 2 s of video under 3.2 s of audio: the crossfade loop, blends included, goes through the whole path.
    result, events = run(
        tmp_path,
        media["one_face"],
        media["audio_3s"],
        IdentityGenerator(),
        [character("red", media["red_ref"])],
    )
    out = decoded(result.output)
    ref = reencode_reference(media["one_face"], result.plan, tmp_path / "ref.mp4")
    assert len(out) == len(ref) == len(result.plan) == result.stats.frames == 80
    worst = min(psnr(a, b) for a, b in zip(out, ref, strict=True))
    assert worst >= 40.0, f"worst frame PSNR {worst:.1f} dB"
    stats = result.stats
    assert stats.characters["red"].frames_synced == 80 and stats.characters["red"].frames_passed_through == 0
    assert stats.poisson + stats.feather == 80 and stats.poisson > 0
    assert {"track", "generate", "composite", "encode"} <= set(stats.stage_seconds)
    assert stats.realtime_factor > 0
    # Progress: every stage reported, lip-sync frames counted up to the total.
    assert (
        ("lipsync", 80, 80) in events and any(e[0] == "track" for e in events) and events[-1][0] == "encode"
    )


def test_brightness_shift_changes_only_the_mask_and_poisson_hides_the_edge(tmp_path, media):
    delta = 60
    result, _ = run(
        tmp_path, media["one_face"], media["audio_2s"], BrightnessGenerator(delta), [character("red", media["red_ref"])],
        loop_mode="none", crf=LOSSLESS,
    )  # fmt: skip
    out = decoded(result.output)
    ref = reencode_reference(media["one_face"], result.plan, tmp_path / "ref.mp4", crf=LOSSLESS)
    src = decoded(media["one_face"])
    poisson_grad, hard_grad = [], []
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        boxes = boxes_for(result, i, W, H)
        assert len(boxes) == 1
        outside = ~face_support(o.shape, boxes, dilate=1)
        diff = np.abs(o.astype(np.int16) - r.astype(np.int16))[outside]
        assert diff.max() <= 2, f"frame {i}: change outside the mask"
        # Gradient across the mask boundary: Poisson output vs a hard paste of the shifted face.
        support = face_support(o.shape, boxes)
        hard = src[result.plan[i].src].copy()
        shifted = np.clip(hard.astype(np.int16) + delta, 0, 255).astype(np.uint8)
        hard[support] = shifted[support]
        band = face_support(o.shape, boxes, dilate=2) & ~(
            cv2.erode(support.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        )
        poisson_grad.append(_grad(o)[band].mean())
        hard_grad.append(_grad(hard)[band].mean())
    ratio = float(np.mean(poisson_grad) / np.mean(hard_grad))
    assert ratio <= 1 / 3, f"Poisson edge gradient is {ratio:.2f} of a hard paste's"


def _grad(img: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))


# --- audio / video --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "repeat", "pingpong", "crossfade"])
def test_loop_modes_av_lengths(tmp_path, media, mode):
    # 3 s of video, 8 s of speech.
    result, _ = run(
        tmp_path, media["three_s"], media["speech_8s"], IdentityGenerator(batch_size=16), loop_mode=mode
    )
    frames, video_s, audio_s = stream_durations(result.output)
    expected = plan_loop(75, 200, mode, 10)
    assert frames == len(expected) == len(result.plan) == result.stats.frames
    assert [result.plan[i] for i in range(len(expected))] == list(expected)
    assert frames == (75 if mode == "none" else 200)
    assert abs(audio_s - video_s) <= 1.0 / FPS, f"audio {audio_s:.3f} s vs video {video_s:.3f} s"
    # No characters given: the most prominent face is synced in every frame.
    assert result.stats.characters["face"].frames_synced == frames


# --- characters -----------------------------------------------------------------------------------------


def _changed(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(out.astype(np.int16) - ref.astype(np.int16)).max(axis=2) > 40


def test_two_characters_each_face_changes_only_in_its_own_region(tmp_path, media):
    chars = [character("red", media["red_ref"]), character("blue", media["blue_ref"])]
    result, _ = run(
        tmp_path,
        media["two_faces"],
        media["audio_2s"],
        MouthMarkGenerator(),
        chars,
        loop_mode="none",
        crf=LOSSLESS,
    )
    out = decoded(result.output)
    ref = reencode_reference(media["two_faces"], result.plan, tmp_path / "ref.mp4", crf=LOSSLESS)
    red_track, blue_track = result.tracks
    assert (red_track.character_id, blue_track.character_id) == ("red", "blue")
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        # identities: each track sits on the face of its colour
        assert (
            red_track.get(i).box.iou(RED.box_at(i)) > 0.7 and blue_track.get(i).box.iou(BLUE.box_at(i)) > 0.7
        )
        red_box = red_track.get(i).box.padded(PADS, W, H)
        blue_box = blue_track.get(i).box.padded(PADS, W, H)
        changed = _changed(o, r)
        red_zone, blue_zone = face_support(o.shape, [red_box], 1), face_support(o.shape, [blue_box], 1)
        assert not (changed & ~(red_zone | blue_zone)).any(), f"frame {i}: change outside both faces"
        assert (changed & red_zone).sum() > 20 and (changed & blue_zone).sum() > 20
    for cid in ("red", "blue"):
        assert result.stats.characters[cid].frames_synced == 50


def test_only_the_requested_character_is_synced(tmp_path, media):
    result, _ = run(
        tmp_path, media["two_faces"], media["audio_2s"], MouthMarkGenerator(), [character("blue", media["blue_ref"])],
        loop_mode="none", crf=LOSSLESS,
    )  # fmt: skip
    out = decoded(result.output)
    ref = reencode_reference(media["two_faces"], result.plan, tmp_path / "ref.mp4", crf=LOSSLESS)
    for i in range(0, 50, 7):
        changed = _changed(out[i], ref[i])
        red_zone = face_support(out[i].shape, [RED.box_at(i).padded(PADS, W, H)], 8)
        blue_zone = face_support(out[i].shape, [BLUE.box_at(i).padded(PADS, W, H)], 1)
        assert not (changed & ~blue_zone).any(), "something beside the blue face changed"
        # (the faces come close at the end, so the red zone excludes the blue one)
        red_only = red_zone & ~blue_zone
        assert (out[i][red_only] == ref[i][red_only]).all(), "the red face changed"
        assert (changed & blue_zone).sum() > 20


def test_missing_face_frames_pass_through(tmp_path, media):
    gap = range(20, 32)
    spec = FaceSpec("red", lambda i: None if i in gap else Box(50, 40, 114, 124))
    video = write_synthetic_video(tmp_path / "gap.mp4", [spec], width=W, height=H, fps=FPS, seconds=2.0)
    result, _ = run(
        tmp_path, video, media["audio_2s"], MouthMarkGenerator(), [character("red", media["red_ref"])],
        loop_mode="none", sample_every=4, crf=LOSSLESS,
    )  # fmt: skip
    stats = result.stats.characters["red"]
    assert stats.frames_passed_through == len(gap) and stats.frames_synced == 50 - len(gap)
    out, ref = (
        decoded(result.output),
        reencode_reference(video, result.plan, tmp_path / "ref.mp4", crf=LOSSLESS),
    )
    for i in gap:
        assert (out[i] == ref[i]).all(), f"frame {i} has no face but was changed"
    assert _changed(out[10], ref[10]).sum() > 20


def test_no_requested_character_raises_no_face_found(tmp_path, media):
    chars = [character("green", media["green_ref"])]
    with pytest.raises(NoFaceFound) as info:
        run(
            tmp_path,
            media["two_faces"],
            media["audio_2s"],
            IdentityGenerator(),
            chars,
            similarity_threshold=0.6,
        )
    message = str(info.value)
    assert "'Green' (green)" in message and "similarity_threshold=0.60" in message
    assert "lowering similarity_threshold" in message
    assert not (tmp_path / "out.mp4").exists()


def test_video_without_faces_raises_no_face_found(tmp_path, media):
    video = tmp_path / "empty.mp4"
    from pipeline_fixtures import write_video

    write_video(video, lambda i: background(W, H), 25, FPS)
    with pytest.raises(NoFaceFound, match="no face"):
        run(tmp_path, video, media["audio_2s"], IdentityGenerator())


def test_still_image_is_looped_to_the_audio(tmp_path, media):
    img = background(W, H)
    draw_face(img, Box(80, 40, 150, 130), (40, 40, 220))
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), img)
    result, _ = run(tmp_path, still, media["audio_2s"], MouthMarkGenerator(), loop_mode="none")
    frames, video_s, audio_s = stream_durations(result.output)
    assert frames == result.stats.frames == 50 and result.stats.source_frames == 1
    assert result.stats.characters["face"].frames_synced == 50
    assert abs(video_s - audio_s) <= 1 / 25


# --- input checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"video": Path("/nonexistent/v.mp4")}, MediaNotFound, "video"),
        ({"audio": Path("/nonexistent/a.wav")}, MediaNotFound, "audio"),
        ({"loop_mode": "bounce"}, InputError, "loop_mode"),
        ({"similarity_threshold": 1.5}, InputError, "similarity_threshold"),
        ({"pads": [0, -1, 0, 0]}, InputError, "pads"),
        ({"output": Path("/tmp/out.avi")}, InputError, "output"),
        ({"characters": (Character("x", "X", (Path("/nonexistent.png"),)),)}, MediaNotFound, "characters"),
    ],
)
def test_bad_inputs_name_the_field(tmp_path, media, change, error, field):
    fields = {"video": media["one_face"], "audio": media["audio_2s"], "output": tmp_path / "o.mp4"}
    settings = {k: change.pop(k) for k in list(change) if k in LipSyncOptions.model_fields}
    pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    with pytest.raises(error) as info:
        # Settings are validated where the options are made (the API body, the CLI), files by the pipeline.
        pipe(LipSyncRequest(**fields | change, options=parse_options(LipSyncOptions, settings)))
    assert info.value.field == field


def test_audio_that_is_not_audio_names_the_audio_field(tmp_path, media):
    bogus = tmp_path / "a.wav"
    bogus.write_bytes(b"not audio at all" * 100)
    pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    with pytest.raises(InputError) as info:
        pipe(LipSyncRequest(media["one_face"], bogus, tmp_path / "o.mp4", options=LipSyncOptions(enhance="off")))
    assert info.value.field == "audio"


# --- memory ---------------------------------------------------------------------------------------------


def test_generator_sees_bounded_batches(tmp_path, media):
    generator = IdentityGenerator(batch_size=64)
    result, _ = run(
        tmp_path, media["one_face"], media["audio_2s"], generator, loop_mode="none", wav2lip_batch_size=6
    )
    assert result.stats.batch_size == 6
    sizes = [shape[0] for shape, _ in generator.calls]
    assert max(sizes) <= 6 and sum(sizes) == 50 and len(sizes) == 9  # ceil(50 / 6) batches of frames
    assert all(mel_shape[1:] == (80, 16) for _, mel_shape in generator.calls)


_RSS_CHILD = """
import resource, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from lipsync.config import Settings
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from pipeline_fixtures import ColorFaceBackend, IdentityGenerator
pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(16), face_backend=ColorFaceBackend())
opts = LipSyncOptions(enhance="off", loop_mode="none", wav2lip_batch_size=16)
pipe(LipSyncRequest(Path({video!r}), Path({audio!r}), Path({out!r}), options=opts))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_video_length(tmp_path):
    import subprocess
    import sys

    peaks = {}
    for seconds in (2, 16):
        video = write_synthetic_video(
            tmp_path / f"v{seconds}.mp4", [FaceSpec("red", moving_box(30, 20, 60, 80, dx=0.05))],
            width=320, height=240, seconds=seconds,
        )  # fmt: skip
        audio = write_speechlike_wav(tmp_path / f"a{seconds}.wav", seconds)
        code = _RSS_CHILD.format(
            tests=str(Path(__file__).parent),
            video=str(video),
            audio=str(audio),
            out=str(tmp_path / f"o{seconds}.mp4"),
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        peaks[seconds] = int(proc.stdout.split()[-1])
    # 8x the frames (400 at 320x240 would be 92 MB decoded) within 15 % of the shorter run's peak
    assert peaks[16] <= 1.15 * peaks[2], peaks


def test_progress_can_cancel_and_leaves_no_partial_output(tmp_path, media):
    import threading

    from lipsync.errors import JobCancelled

    def cancel(stage: str, done: int, total: int) -> None:
        if stage == "lipsync" and done >= 16:
            raise JobCancelled("cancelled by the user")

    before = threading.active_count()
    pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    request = LipSyncRequest(
        media["one_face"],
        media["audio_2s"],
        tmp_path / "out.mp4",
        options=LipSyncOptions(enhance="off", loop_mode="none", wav2lip_batch_size=8),
    )
    with pytest.raises(JobCancelled):
        pipe(request, progress=cancel)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its partial file
    assert threading.active_count() == before  # encoder and compositing threads are gone


def test_track_only_helper(media):
    pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    tracked = pipe.track(media["two_faces"], [character("blue", media["blue_ref"])])
    assert tracked.info.num_frames == 50 and len(tracked.tracks) == 1
    assert all(tracked.tracks[0].get(i).box.iou(BLUE.box_at(i)) > 0.7 for i in range(50))
    with pytest.raises(NoFaceFound, match="similarity_threshold"):
        pipe.track(media["two_faces"], [character("green", media["green_ref"])])


def test_new_audio_is_muxed_at_its_own_rate(tmp_path, media):
    from lipsync.media import probe

    audio = write_speechlike_wav(tmp_path / "a44.wav", 1.5, sample_rate=44100)
    result, _ = run(tmp_path, media["one_face"], audio, IdentityGenerator(), loop_mode="none")
    info = probe(result.output)
    assert info.audio_sample_rate == 44100 and result.stats.frames == 38  # ceil(1.5 s * 25 fps)
    frames, video_s, audio_s = stream_durations(result.output)
    assert frames == 38 and abs(video_s - audio_s) <= 1 / FPS


def test_stereo_dub_is_streamed_into_the_output_not_held(tmp_path, media):
    from dataclasses import fields

    from lipsync.media import decode_audio, probe
    from lipsync.pipeline import _Job
    from lipsync.stages.silence import Voice
    from media_fixtures import write_audio

    # The job keeps each track's mel only; the track to mux is read from the file while encoding (a long
    # dub's waveform at 48 kHz stereo would be GBs).
    assert [f.name for f in fields(_Job) if "ndarray" in str(f.type)] == []
    assert [f.name for f in fields(Voice) if "ndarray" in str(f.type)] == ["mel"]
    audio = tmp_path / "dub.m4a"
    write_audio(audio, "ipod", "aac", "fltp", 48000, seconds=1.5, channels=2, stereo_right_gain=0.0)
    result, _ = run(tmp_path, media["one_face"], audio, IdentityGenerator(), loop_mode="none")
    info = probe(result.output)
    assert (info.audio_sample_rate, info.audio_channels, result.stats.frames) == (48000, 2, 38)
    frames, video_s, audio_s = stream_durations(result.output)
    assert frames == 38 and abs(video_s - audio_s) <= 1 / FPS
    # Left carries the tone, right was silent and stays so: the channels were kept, not mixed.
    out = decode_audio(result.output, 48000, mono=False)
    assert np.abs(out[4800:-4800, 0]).max() > 0.3 and np.abs(out[:, 1]).max() < 0.02


def test_rotated_video_is_processed_and_written_upright(tmp_path, media):
    import av

    from lipsync.media import iter_frames, probe
    from pipeline_fixtures import render_synthetic_frame

    # Stored sideways (portrait) with a display matrix: the pipeline works on, and writes, the upright picture.
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = H, W, "yuv420p"
        stream.set_display_rotation(90)
        for i in range(25):
            upright = render_synthetic_frame(W, H, [RED], i)
            frame = av.VideoFrame.from_ndarray(cv2.rotate(upright, cv2.ROTATE_90_CLOCKWISE), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe(path).rotation != 0
    audio = write_speechlike_wav(tmp_path / "a1.wav", 1.0)
    result, _ = run(tmp_path, path, audio, MouthMarkGenerator(), loop_mode="none", crf=LOSSLESS)
    out_info = probe(result.output)
    assert (out_info.display_width, out_info.display_height, out_info.rotation) == (W, H, 0)
    out = decoded(result.output)
    source = list(iter_frames(path))  # upright, as the pipeline saw them
    for i in (0, 12, 24):
        assert result.tracks[0].get(i).box.iou(RED.box_at(i)) > 0.7
        changed = _changed(out[i], source[i])
        zone = face_support(out[i].shape, [RED.box_at(i).padded(PADS, W, H)], dilate=3)
        assert changed.sum() > 20 and not changed[~zone].any()
