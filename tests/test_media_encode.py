"""VideoWriter: H.264 yuv420p, CRF/preset, odd sizes (edge padding), AAC cut to the video, faststart."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync.errors import EncodeError
from lipsync.media import VideoWriter, decode_audio, even_size, iter_frames, probe
from media_fixtures import box_order, index_frame, read_index


def _write(path, n, fps=Fraction(25), width=64, height=48, **kwargs):
    with VideoWriter(path, width, height, fps, preset="ultrafast", **kwargs) as writer:
        for i in range(n):
            writer.write(index_frame(i, width, height))
    return writer


def test_round_trip_frames_and_format(tmp_path):
    path = tmp_path / "out.mp4"
    writer = _write(path, 40, fps=Fraction(30000, 1001))
    assert writer.frames_written == 40
    info = probe(path)
    assert (info.video_codec, info.pix_fmt, info.fps, info.num_frames) == (
        "h264",
        "yuv420p",
        Fraction(30000, 1001),
        40,
    )
    assert not info.is_vfr and not info.has_audio
    assert [read_index(f) for f in iter_frames(path)] == list(range(40))


def test_faststart_puts_index_first(tmp_path):
    path = tmp_path / "out.mp4"
    _write(path, 10)
    kinds = [kind for kind, _ in box_order(path)]
    assert kinds.index(b"moov") < kinds.index(b"mdat")


def test_odd_size_is_edge_padded(tmp_path):
    assert even_size(65, 49) == (66, 50) and even_size(64, 48) == (64, 48)
    path = tmp_path / "odd.mp4"
    rng = np.random.default_rng(0)
    gray = rng.integers(16, 235, (7, 10), dtype=np.uint8)  # grey: 4:2:0 chroma loses nothing
    base = np.repeat(np.repeat(gray, 7, 0), 7, 1)[:49, :65, None].repeat(3, 2)
    with VideoWriter(path, 65, 49, 25, crf=0, preset="ultrafast") as writer:
        writer.write(np.ascontiguousarray(base))
    info = probe(path)
    assert (info.width, info.height) == (66, 50)
    frame = next(iter_frames(path))
    assert np.abs(frame[:49, :65].astype(int) - base.astype(int)).mean() < 4
    # The added column/row repeat their neighbours.
    assert np.abs(frame[:49, 65].astype(int) - frame[:49, 64].astype(int)).mean() < 6
    assert np.abs(frame[49, :65].astype(int) - frame[48, :65].astype(int)).mean() < 6


def test_crf_changes_size(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(10)]
    sizes = {}
    for crf in (10, 40):
        path = tmp_path / f"crf{crf}.mp4"
        with VideoWriter(path, 64, 48, 25, crf=crf, preset="ultrafast") as writer:
            for frame in frames:
                writer.write(frame)
        sizes[crf] = path.stat().st_size
    assert sizes[40] < sizes[10] / 2


def _audio_samples(path) -> int:
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


@pytest.mark.parametrize("audio_seconds", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("rate", [16000, 44100])
def test_audio_is_cut_or_padded_to_video(tmp_path, audio_seconds, rate):
    fps = Fraction(30000, 1001)
    n = 37  # 1.234 s of video
    t = np.arange(int(audio_seconds * rate)) / rate
    tone = (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    path = tmp_path / "av.mp4"
    writer = _write(path, n, fps=fps, audio=tone, audio_rate=rate)
    video_s = n / fps
    assert writer.duration == pytest.approx(float(video_s))
    info = probe(path)
    assert info.has_audio and info.audio_sample_rate == rate and info.audio_channels == 1
    assert info.num_frames == n
    assert abs(info.audio_duration - float(video_s)) < 1 / float(fps)
    # Decoded samples match the video duration to within one AAC frame of priming/padding.
    assert abs(_audio_samples(path) - float(video_s) * rate) <= 1024
    decoded = decode_audio(path)
    assert abs(decoded.size / 16000 - float(video_s)) < 1 / float(fps)
    if audio_seconds < float(video_s):  # padded with silence after the tone
        assert np.abs(decoded[int(audio_seconds * 16000) + 400 :]).max() < 0.02
    assert np.abs(decoded[1000:4000]).max() > 0.3


def test_stereo_audio(tmp_path):
    stereo = np.zeros((16000, 2), np.float32)
    stereo[:, 0] = 0.3
    path = tmp_path / "st.mp4"
    _write(path, 25, audio=stereo, audio_rate=16000)
    assert probe(path).audio_channels == 2


def test_long_interleaving_keeps_audio_in_step(tmp_path):
    # Audio chunks are muxed while frames are written, not all at close.
    path = tmp_path / "long.mp4"
    audio = np.zeros(16000 * 4, np.float32)
    _write(path, 100, fps=25, audio=audio)
    with av.open(str(path)) as container:
        kinds = [p.stream.type for p in container.demux() if p.size]
    first_audio = kinds.index("audio")
    assert first_audio < len(kinds) // 2


# --- errors ---------------------------------------------------------------------------------------


def test_no_frames_is_an_error_and_leaves_no_file(tmp_path):
    path = tmp_path / "none.mp4"
    with pytest.raises(EncodeError, match="no frames were written"), VideoWriter(path, 64, 48, 25):
        pass
    assert not path.exists()


def test_wrong_frame_shape(tmp_path):
    with VideoWriter(tmp_path / "x.mp4", 64, 48, 25, preset="ultrafast") as writer:
        with pytest.raises(ValueError, match="expected a 48x64x3 uint8 BGR frame"):
            writer.write(np.zeros((48, 63, 3), np.uint8))
        writer.write(np.zeros((48, 64, 3), np.uint8))


def test_exception_inside_with_removes_partial_file(tmp_path):
    path = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, 64, 48, 25, preset="ultrafast") as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
        raise RuntimeError("pipeline failed")
    assert not path.exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, 25, crf=60)
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, 0)
    with pytest.raises(EncodeError, match="cannot create"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, 25, preset="no-such-preset").write(
            np.zeros((48, 64, 3), np.uint8)
        )


def test_colours_round_trip_and_are_tagged_bt709(tmp_path):
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255), (30, 200, 120), (128, 128, 128)]
    image = np.zeros((64, 96, 3), np.uint8)
    for k, colour in enumerate(colours):
        image[:, k * 16 : (k + 1) * 16] = colour
    path = tmp_path / "colours.mp4"
    with VideoWriter(path, 96, 64, 25, crf=0, preset="ultrafast") as writer:
        writer.write(image)
    frame = next(iter_frames(path))
    for k, colour in enumerate(colours):
        assert np.abs(frame[32, k * 16 + 8].astype(int) - colour).max() <= 6, colour
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)
