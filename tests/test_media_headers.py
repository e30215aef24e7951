"""The header readers of lipsync.media._headers on real files of every format they read (OpenCV's and
FFmpeg's own encoders), on files they must not read, and the probe limits they let apply before a decode."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync.errors import MediaTooLarge
from lipsync.media import MediaLimits, probe
from lipsync.media._headers import image_size, wav_data_extent

W, H = 123, 45  # odd and unequal, so a swapped or rounded size shows


def _picture(channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (H, W, channels), dtype=np.uint8)


def _write(path: Path, picture: np.ndarray, params: list[int] | None = None) -> Path:
    ok, buf = cv2.imencode(path.suffix, picture, params or [])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _gif(path: Path) -> Path:
    with av.open(str(path), "w", format="gif") as out:
        stream = out.add_stream("gif", rate=1)
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb8"
        frame = av.VideoFrame.from_ndarray(_picture(), format="bgr24").reformat(format="rgb8")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


CASES = {
    "png": lambda p: _write(p.with_suffix(".png"), _picture()),
    "bmp": lambda p: _write(p.with_suffix(".bmp"), _picture()),
    "jpeg": lambda p: _write(p.with_suffix(".jpg"), _picture()),
    "jpeg_progressive": lambda p: _write(p.with_suffix(".jpg"), _picture(), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "webp_lossy": lambda p: _write(p.with_suffix(".webp"), _picture(), [cv2.IMWRITE_WEBP_QUALITY, 90]),
    "webp_lossless": lambda p: _write(p.with_suffix(".webp"), _picture(), [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "webp_alpha": lambda p: _write(p.with_suffix(".webp"), _picture(4), [cv2.IMWRITE_WEBP_QUALITY, 90]),
    "gif": lambda p: _gif(p.with_suffix(".gif")),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_the_declared_size_of_each_format_is_the_decoded_size(tmp_path, kind):
    path = CASES[kind](tmp_path / kind)
    assert image_size(path) == (W, H)
    # The size FFmpeg finds by decoding agrees (probe reads the header first, then decodes one frame).
    info = probe(path)
    assert (info.width, info.height) == (W, H)


def test_the_webp_cases_are_the_three_bitstreams(tmp_path):
    # The three WebP cases above must exercise the three layouts the reader parses.
    kinds = {CASES[k](tmp_path / k).read_bytes()[12:16] for k in ("webp_lossy", "webp_lossless", "webp_alpha")}
    assert kinds == {b"VP8 ", b"VP8L", b"VP8X"}


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """``jpeg`` with a marker segment inserted right after SOI (before its SOF)."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_a_jpeg_size_is_found_after_large_segments_and_fill_bytes(tmp_path):
    _ok, buf = cv2.imencode(".jpg", _picture())
    jpeg = buf.tobytes()
    exif = b"Exif\x00\x00" + b"\x00" * 30_000
    comment = b"c" * 20_000
    padded = _with_segment(_with_segment(jpeg, 0xFE, comment), 0xE1, exif)
    padded = padded[:2] + b"\xff" + padded[2:]  # a fill byte before a marker is legal
    path = tmp_path / "segments.jpg"
    path.write_bytes(padded)
    assert image_size(path) == (W, H)
    assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (H, W)


def test_a_jpeg_whose_size_lies_beyond_the_read_head_is_left_to_ffmpeg(tmp_path):
    _ok, buf = cv2.imencode(".jpg", _picture())
    jpeg = buf.tobytes()
    late = jpeg
    for _ in range(2):  # two 60 KB segments: the SOF starts past the 64 KB the reader looks at
        late = _with_segment(late, 0xE2, b"\x00" * 60_000)
    path = tmp_path / "late.jpg"
    path.write_bytes(late)
    assert image_size(path) is None
    info = probe(path)  # FFmpeg still reads it, by decoding
    assert (info.width, info.height) == (W, H)


FOREIGN = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM" + b"\x00" * 10,
           b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\xff\xd8" + b"\x00" * 9,
           b"not a picture at all"]  # fmt: skip


@pytest.mark.parametrize("content", FOREIGN)
def test_truncated_or_foreign_headers_give_no_size(tmp_path, content):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    assert image_size(path) is None


def test_a_missing_file_gives_no_size(tmp_path):
    assert image_size(tmp_path / "absent.png") is None
    assert wav_data_extent(tmp_path / "absent.wav") is None


@pytest.mark.parametrize("kind", ["gif", "webp_alpha", "webp_lossless", "bmp", "jpeg_progressive"])
def test_an_image_over_the_limits_is_refused_from_its_header(tmp_path, monkeypatch, kind):
    path = CASES[kind](tmp_path / kind)
    import lipsync.media.info as info_module

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a frame before checking the limits")

    monkeypatch.setattr(info_module, "_first_frame", no_decode)
    with pytest.raises(MediaTooLarge, match=f"declares a picture of {W}x{H}"):
        probe(path, MediaLimits(max_width=100, max_height=40))


# --- WAV: the declared against the present length ----------------------------------------------------


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(seconds * rate), np.int16).tobytes())
    return path


def test_a_whole_wav_declares_what_it_holds_and_a_cut_one_less(tmp_path):
    path = _wav(tmp_path / "a.wav", 2.0)
    assert wav_data_extent(path) == (2.0, 2.0)
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + 16000])  # half a second of the two
    assert wav_data_extent(cut) == (2.0, 0.5)


def test_chunks_before_the_data_are_skipped_word_aligned(tmp_path):
    data = _wav(tmp_path / "a.wav", 1.0).read_bytes()
    # A LIST chunk of odd length (padded to a word) between "fmt " and "data".
    fmt_end = 12 + 8 + struct.unpack("<I", data[16:20])[0]
    info = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"
    path = tmp_path / "list.wav"
    path.write_bytes(data[:fmt_end] + info + data[fmt_end:])
    assert wav_data_extent(path) == (1.0, 1.0)


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_a_streamed_wav_leaves_its_length_open(tmp_path, size):
    data = bytearray(_wav(tmp_path / "a.wav", 1.0).read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", size)
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))
    assert wav_data_extent(path) is None


def test_files_that_are_not_pcm_wavs_give_no_extent(tmp_path):
    flac = tmp_path / "a.flac"
    flac.write_bytes(b"fLaC" + b"\x00" * 100)
    assert wav_data_extent(flac) is None
    data = _wav(tmp_path / "a.wav", 1.0).read_bytes()
    no_data = tmp_path / "nodata.wav"
    no_data.write_bytes(data[: data.index(b"data")])  # the header alone, its data chunk missing
    assert wav_data_extent(no_data) is None
