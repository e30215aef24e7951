"""Round trip: decode the Chaplin clip, re-encode it over the mp3 speech under every loop mode."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_file
from lipsync.media import FrameReader, VideoWriter, decode_audio, iter_frames, probe
from lipsync.types import LOOP_MODES

SOURCE_FRAMES = 60  # 2 s of video against 4.9 s of speech, so every mode has to loop (or trim)


@pytest.fixture(scope="module")
def chaplin_half(tmp_path_factory):
    """The first 2 s of Chaplin at half size (425x240: an odd width, on purpose), written by our writer."""
    src = shared_file("talking_chaplin_850x480_30fps.mp4")
    info = probe(src)
    out = tmp_path_factory.mktemp("rt") / "chaplin_half.mp4"
    with VideoWriter(out, 425, 240, info.fps, crf=20, preset="ultrafast") as writer:
        for i, frame in enumerate(iter_frames(src, info=info)):
            if i == SOURCE_FRAMES:
                break
            writer.write(frame[::2, ::2])
    return out


@pytest.mark.parametrize("mode", LOOP_MODES)
def test_loop_modes_round_trip(tmp_path, chaplin_half, mode):
    from lipsync.audio import num_audio_frames
    from lipsync.stages.looping import plan_loop

    speech = decode_audio(shared_file("speech_44k_mono_5s.mp3"))
    info = probe(chaplin_half)
    assert info.num_frames == SOURCE_FRAMES and (info.width, info.height) == (426, 240)
    fps = info.fps
    audio_frames = num_audio_frames(speech.size, 16000, fps)
    plan = plan_loop(info.num_frames, audio_frames, mode, crossfade_frames=8)
    assert len(plan) == (SOURCE_FRAMES if mode == "none" else audio_frames)

    out = tmp_path / f"{mode}.mp4"
    with (
        FrameReader(chaplin_half, info=info, block=16) as reader,
        VideoWriter(
            out, info.width, info.height, fps, crf=23, preset="ultrafast", audio=speech, audio_rate=16000
        ) as writer,
    ):
        for step in plan:
            frame = reader[step.src]
            if step.is_blend:
                other = reader[step.src2].astype(np.float32)
                frame = ((1.0 - step.weight) * frame.astype(np.float32) + step.weight * other).round()
                frame = frame.astype(np.uint8)
            writer.write(frame)

    assert writer.frames_written == len(plan)
    result = probe(out)
    assert result.num_frames == result.source_frames == len(plan)
    assert result.fps == fps and not result.is_vfr
    one_frame = 1 / float(fps)
    assert abs(result.audio_duration - result.video_duration) < one_frame
    assert result.video_duration == pytest.approx(len(plan) / float(fps))
    # The whole file decodes: every frame, and audio that spans the video.
    checks = set(range(0, len(plan), max(1, len(plan) // 12)))
    decoded = 0
    with FrameReader(chaplin_half, info=info) as reader:
        for i, frame in enumerate(iter_frames(out, info=result)):
            decoded += 1
            if i in checks and not plan[i].is_blend:
                # Each output frame shows the planned source frame (re-encoding blurs it only slightly).
                diff = np.abs(frame.astype(np.int16) - reader[plan[i].src]).mean()
                assert diff < 4.0, (mode, i, plan[i], diff)
    assert decoded == len(plan)
    audio = decode_audio(out)
    assert abs(audio.size / 16000 - result.video_duration) < one_frame
    # The speech is really there (not silence): its loudness matches the source over the shared span.
    span = min(audio.size, speech.size)
    src_rms = float(np.sqrt(np.mean(speech[:span] ** 2)))
    assert float(np.sqrt(np.mean(audio[:span] ** 2))) == pytest.approx(src_rms, rel=0.25)
