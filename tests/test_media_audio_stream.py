"""Streamed audio: iter_audio / AudioSource give exactly decode_audio's samples, with its errors, in
bounded memory; VideoWriter muxes an AudioSource like the equivalent array."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync.errors import (
    CorruptMedia,
    EmptyAudio,
    MediaError,
    MediaNotFound,
    MediaTooLarge,
    NoAudioStream,
    NotAMediaFile,
)
from lipsync.media import AudioSource, MediaLimits, VideoWriter, decode_audio, iter_audio, probe
from media_fixtures import AUDIO_FORMATS, index_frame, write_audio, write_empty_wav, write_video

# Irregular block sizes, so reads straddle the decoder's chunk boundaries in every way.
_BLOCKS = (1, 4095, 17, 20000, 1024, 333, 65536)


def _read_all(source: AudioSource) -> np.ndarray:
    parts, k = [], 0
    while (block := source.read(_BLOCKS[k % len(_BLOCKS)])).shape[1]:
        assert block.dtype == np.float32 and block.shape[0] == source.channels
        assert block.shape[1] == _BLOCKS[k % len(_BLOCKS)] or source.read(1).shape[1] == 0  # short = end
        parts.append(block.copy())
        k += 1
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("name", ["tone.mp3", "tone.m4a"])
@pytest.mark.parametrize("rate", [16000, 44100])
@pytest.mark.parametrize("mono", [True, False])
def test_streamed_chunks_are_exactly_decode_audio(tmp_path, name, rate, mono):
    fmt, codec, sample_fmt, src_rate = AUDIO_FORMATS[name]
    path = tmp_path / name
    # Stereo with unequal channels, so a swapped, dropped or wrongly averaged channel shows.
    write_audio(path, fmt, codec, sample_fmt, src_rate, seconds=3.0, channels=2, stereo_right_gain=0.3)
    whole = decode_audio(path, rate, mono=mono)
    expected = whole[None, :] if mono else whole.T
    # Exactly 3 s: the codec's priming and its padding of the last frame are both trimmed, which the
    # streamed decoder can only do by holding back the tail until the stream ends.
    assert expected.shape == (1 if mono else 2, 3 * rate)

    chunks = list(iter_audio(path, rate, mono=mono))
    assert len(chunks) > 2  # really streamed, not one block
    assert all(c.dtype == np.float32 and c.ndim == 2 and c.shape[1] > 0 for c in chunks)
    assert np.array_equal(np.concatenate(chunks, axis=1), expected)

    with AudioSource.open(path, rate, mono=mono) as source:
        assert (source.rate, source.channels) == (rate, expected.shape[0])
        streamed = _read_all(source)
        assert source.read(100).shape == (source.channels, 0)  # stays at the end
    assert source.closed
    assert np.array_equal(streamed, expected)


def test_surround_streams_as_stereo(tmp_path):
    path = tmp_path / "surround.wav"
    write_audio(path, "wav", "pcm_s16le", "s16", 48000, seconds=2.0, channels=6)
    with AudioSource.open(path, 48000, mono=False) as source:
        assert source.channels == 2
        assert np.array_equal(_read_all(source), decode_audio(path, 48000, mono=False).T)


# --- errors: the same types (and messages) as decode_audio -----------------------------------------


def _error(call) -> MediaError:
    with pytest.raises(MediaError) as err:
        call()
    return err.value


def _cut_between_packets(tmp_path):
    path = write_video(tmp_path / "av.mp4", frames=25, fps=25, audio_seconds=3.0, faststart=True)
    with av.open(str(path)) as container:
        entries = container.streams.audio[0].index_entries
        cut_at = max(e.pos for e in entries[: len(entries) // 2])
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(path.read_bytes()[:cut_at])
    return cut


def _truncated_index(tmp_path):
    path = write_video(tmp_path / "av2.mp4", frames=50, fps=25, audio_seconds=2.0)
    cut = tmp_path / "noindex.m4a"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return cut


def _html(tmp_path):
    page = tmp_path / "speech.mp3"
    page.write_text("<html><body>Access denied</body></html>")
    return page


def _two_seconds(tmp_path):
    write_audio(tmp_path / "a.wav", "wav", "pcm_s16le", "s16", 16000, seconds=2.0)
    return tmp_path / "a.wav"


@pytest.mark.parametrize(
    ("make", "kind", "limits"),
    [
        (lambda d: d / "missing.mp3", MediaNotFound, None),
        (_html, NotAMediaFile, None),
        (lambda d: write_video(d / "silent.mp4", frames=5), NoAudioStream, None),
        (lambda d: write_empty_wav(d / "empty.wav"), EmptyAudio, None),
        (_truncated_index, CorruptMedia, None),
        (_cut_between_packets, CorruptMedia, None),
        (_two_seconds, MediaTooLarge, MediaLimits(max_duration_s=1.0)),
    ],
)
def test_errors_match_decode_audio(tmp_path, make, kind, limits):
    path = make(tmp_path)
    expected = _error(lambda: decode_audio(path, 16000, limits=limits))

    def stream() -> None:
        # Damage past the first chunk surfaces from the read that reaches it, not from open.
        with AudioSource.open(path, 16000, limits=limits) as source:
            _read_all(source)

    for got in (_error(stream), _error(lambda: list(iter_audio(path, 16000, limits=limits)))):
        assert type(got) is type(expected) is kind
        assert (got.message, got.field) == (expected.message, expected.field)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="sample_rate must be positive"):
        iter_audio(tmp_path / "x.wav", 0)  # eagerly, before any file is touched
    with pytest.raises(ValueError, match="mono or stereo"):
        AudioSource.from_array(np.zeros((10, 3), np.float32), 16000)
    with pytest.raises(ValueError, match="float32 in \\[-1, 1\\] or int16"):
        AudioSource.from_array(np.zeros(10, np.int32), 16000)
    source = AudioSource.from_array(np.zeros(10, np.float32), 16000)
    source.close()
    with pytest.raises(ValueError, match="closed"):
        source.read(1)


# --- in-memory sources ----------------------------------------------------------------------------


def test_from_array_reads_views_in_order():
    stereo = np.random.default_rng(0).uniform(-1, 1, (10000, 2)).astype(np.float32)
    source = AudioSource.from_array(stereo, 44100)
    assert (source.rate, source.channels) == (44100, 2)
    first = source.read(3000)
    assert np.shares_memory(first, stereo)  # no copy of the caller's array, not even per block
    rest = source.read(9000)
    assert rest.shape == (2, 7000) and source.read(5).shape == (2, 0)
    assert np.array_equal(np.concatenate([first, rest], axis=1), stereo.T)


def test_from_array_converts_int16_and_float64_per_block():
    ints = np.array([-32768, 0, 16384, 32767], np.int16)
    block = AudioSource.from_array(ints, 16000).read(4)
    assert block.dtype == np.float32 and block.shape == (1, 4)
    assert np.array_equal(block[0], ints.astype(np.float32) / 32768.0)
    doubles = np.linspace(-1, 1, 7)[:, None]
    assert np.array_equal(AudioSource.from_array(doubles, 8000).read(7), doubles.T.astype(np.float32))


# --- VideoWriter fed from a source ----------------------------------------------------------------


def _write(path, n, fps, **kwargs):
    with VideoWriter(path, 64, 48, fps, preset="ultrafast", **kwargs) as writer:
        for i in range(n):
            writer.write(index_frame(i, 64, 48))
    return writer


@pytest.mark.parametrize("seconds", [0.5, 3.0])  # padded with silence / cut to the video
def test_writer_with_source_matches_writer_with_array(tmp_path, seconds):
    fmt, codec, sample_fmt, rate = AUDIO_FORMATS["tone.m4a"]
    src = tmp_path / "new.m4a"
    write_audio(src, fmt, codec, sample_fmt, rate, seconds=seconds, channels=2, stereo_right_gain=0.3)
    fps, n = Fraction(30000, 1001), 37  # 1.234 s of video

    array_out = _write(
        tmp_path / "array.mp4", n, fps, audio=decode_audio(src, rate, mono=False), audio_rate=rate
    )
    with AudioSource.open(src, rate, mono=False) as source:
        stream_out = _write(tmp_path / "stream.mp4", n, fps, audio=source)
        assert not source.closed  # the caller's source is the caller's to close
    assert stream_out.duration == array_out.duration == pytest.approx(float(n / fps))

    a, b = probe(array_out.path), probe(stream_out.path)
    assert (b.audio_sample_rate, b.audio_channels, b.num_frames) == (rate, 2, n)
    assert b.audio_duration == a.audio_duration
    assert abs(b.audio_duration - float(n / fps)) < 1 / float(fps)
    # Same samples into the same encoder: the AAC tracks decode identically.
    assert np.array_equal(
        decode_audio(stream_out.path, rate, mono=False), decode_audio(array_out.path, rate, mono=False)
    )


def test_writer_rejects_a_source_at_another_rate(tmp_path):
    source = AudioSource.from_array(np.zeros(100, np.float32), 44100)
    with pytest.raises(ValueError, match="differs from the audio source's rate 44100"):
        VideoWriter(tmp_path / "x.mp4", 64, 48, 25, audio=source, audio_rate=48000)
    assert not (tmp_path / "x.mp4").exists()


# --- memory ---------------------------------------------------------------------------------------

_LONG_RATE, _LONG_SECONDS = 48000, 600.0  # ten minutes of 48 kHz stereo: 230 MB as a float32 array


def _write_long_flac(path) -> None:
    """A 10-minute 48 kHz stereo tone as FLAC at the fastest level (under a second to write)."""
    out = av.open(str(path), mode="w", format="flac")
    stream = out.add_stream("flac", rate=_LONG_RATE)
    stream.codec_context.layout, stream.codec_context.format = "stereo", "s16"
    stream.options = {"compression_level": "0"}
    block = 4608  # a whole number of 440 Hz periods does not matter: the content is irrelevant here
    t = np.arange(block) / _LONG_RATE
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    packed = np.ascontiguousarray(np.stack([tone, tone // 2]).T.reshape(1, -1))
    for start in range(0, round(_LONG_RATE * _LONG_SECONDS), block):
        frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = _LONG_RATE, start, Fraction(1, _LONG_RATE)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()


# Run in a fresh interpreter: VmHWM is that process's own peak, untouched by the test runner's history.
_MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from lipsync.media import AudioSource, VideoWriter

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    base = status("VmRSS:")
    audio, out = sys.argv[1], sys.argv[2]
    frame = np.zeros((48, 64, 3), np.uint8)
    with AudioSource.open(audio, 48000, mono=False) as source:
        with VideoWriter(out, 64, 48, 25, preset="ultrafast", audio=source) as writer:
            for _ in range(20):
                writer.write(frame)
        read = round(0.8 * 48000)  # what the writer consumed for 20 frames at 25 fps
        while (block := source.read(65536)).shape[1]:  # then the rest of the ten minutes, streamed
            read += block.shape[1]
    print(json.dumps({"base": base, "hwm": status("VmHWM:"), "read": read, "channels": source.channels}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is read from /proc/self/status")
def test_streaming_ten_minutes_stays_far_below_the_array(tmp_path):
    audio = tmp_path / "long.flac"
    _write_long_flac(audio)
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(audio), str(tmp_path / "out.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = round(_LONG_RATE * _LONG_SECONDS)
    assert got["read"] == samples and got["channels"] == 2  # the whole track went through the reader
    array_bytes = samples * 2 * 4
    # Holding the decoded track alone would add 230 MB over the baseline (decode_audio peaks at twice
    # that); streaming adds a few MB of decoder, encoder and one chunk.
    assert got["hwm"] - got["base"] < array_bytes / 8, got
    assert probe(tmp_path / "out.mp4").audio_channels == 2
