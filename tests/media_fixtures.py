"""Synthetic media for the media tests, written with PyAV (no external ffmpeg, no shared files).

Every video frame carries its own index as 8 black/white vertical stripes across the top half, and a
red marker in the stored top-left corner, so tests can tell which source frame (and which orientation)
came out of a decode after lossy compression.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 8


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """A BGR frame encoding ``index`` (mod 256) in stripes, with a red top-left marker."""
    frame = np.full((height, width, 3), 128, np.uint8)
    stripe = width // BITS
    for bit in range(BITS):
        value = 255 if (index >> bit) & 1 else 0
        frame[: height // 2, bit * stripe : (bit + 1) * stripe] = value
    mh, mw = max(2, height // 6), max(2, width // 6)
    frame[height // 2 : height // 2 + mh, :mw] = (0, 0, 255)  # red (BGR), stored-left, below stripes
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of index_frame for an upright (stored-orientation) frame."""
    height, width = frame.shape[:2]
    stripe = width // BITS
    value = 0
    for bit in range(BITS):
        patch = frame[
            height // 8 : height // 2 - height // 8,
            bit * stripe + stripe // 4 : (bit + 1) * stripe - stripe // 4,
        ]
        if patch.mean() > 128:
            value |= 1 << bit
    return value


def write_video(
    path: Path,
    *,
    frames: int = 30,
    fps: Fraction | int = 25,
    width: int = 64,
    height: int = 48,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation_ccw: int | None = None,
    rotate_tag: str | None = None,
    audio_seconds: float | None = None,
    audio_rate: int = 16000,
    container_format: str | None = None,
    faststart: bool = False,
    pix_fmt: str = "yuv420p",
    preset: str = "ultrafast",
    gop: int | None = None,
) -> Path:
    """An H.264 clip of index frames. ``pts`` (in ``time_base`` units) makes it variable-frame-rate."""
    options = {"movflags": "+faststart"} if faststart else {}
    out = av.open(str(path), mode="w", format=container_format, options=options)
    fps = Fraction(fps)
    x264 = {"preset": preset, "crf": "18"}
    if gop is not None:  # short GOPs give seeks many keyframes to land on
        x264.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
    stream = out.add_stream("libx264", rate=fps, options=x264)
    if pix_fmt == "yuv420p":  # 4:2:0 needs even sizes; 4:4:4 stores odd ones exactly
        width, height = width + (width & 1), height + (height & 1)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    tb = time_base if time_base is not None else 1 / fps
    stream.codec_context.time_base = tb
    if rotation_ccw is not None:
        stream.set_display_rotation(rotation_ccw)
    if rotate_tag is not None:
        stream.metadata["rotate"] = rotate_tag
    astream = None
    if audio_seconds is not None:
        astream = out.add_stream("aac", rate=audio_rate)
        astream.codec_context.layout = "mono"
    count = len(pts) if pts is not None else frames
    for i in range(count):
        image = index_frame(i, stream.width, stream.height)
        vf = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format=pix_fmt)
        vf.pts = pts[i] if pts is not None else i
        vf.time_base = tb
        out.mux(stream.encode(vf))
    out.mux(stream.encode(None))
    if astream is not None:
        n = round((audio_seconds or 0) * audio_rate)
        t = np.arange(n) / audio_rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(
                tone[None, start : start + 1024].copy(), format="fltp", layout="mono"
            )
            af.sample_rate = audio_rate
            af.pts = start
            af.time_base = Fraction(1, audio_rate)
            out.mux(astream.encode(af))
        out.mux(astream.encode(None))
    out.close()
    return path


# (container format, codec, sample format, rate) for every audio format decode_audio must read.
AUDIO_FORMATS: dict[str, tuple[str, str, str, int]] = {
    "s16.wav": ("wav", "pcm_s16le", "s16", 44100),
    "s32.wav": ("wav", "pcm_s32le", "s32", 22050),
    "flt.wav": ("wav", "pcm_f32le", "flt", 16000),
    "u8.wav": ("wav", "pcm_u8", "u8", 8000),
    "tone.mp3": ("mp3", "libmp3lame", "fltp", 44100),
    "tone.m4a": ("ipod", "aac", "fltp", 48000),
    "tone.flac": ("flac", "flac", "s16", 44100),
    "tone.ogg": ("ogg", "libopus", "flt", 48000),
    "tone.opus": ("opus", "libopus", "flt", 48000),
}


def write_audio(
    path: Path,
    container_format: str,
    codec: str,
    sample_format: str,
    rate: int,
    *,
    seconds: float = 1.0,
    freq: float = 440.0,
    channels: int = 1,
    stereo_right_gain: float = 1.0,
) -> np.ndarray:
    """A sine tone file; returns the float samples written (channels, n) for comparisons."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.stack([tone] + [tone * stereo_right_gain] * (channels - 1)).astype(np.float64)
    out = av.open(str(path), mode="w", format=container_format)
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    stream = out.add_stream(codec, rate=rate)
    stream.codec_context.layout = layout
    stream.codec_context.format = sample_format
    fmt = av.AudioFormat(sample_format)
    frame_size = stream.codec_context.frame_size or 1024
    if codec == "libopus":
        frame_size = 960
    for start in range(0, n, frame_size):
        block = data[:, start : start + frame_size]
        if fmt.name in ("s16", "s16p"):
            arr = (block * 32767).astype(np.int16)
        elif fmt.name in ("s32", "s32p"):
            arr = (block * (2**31 - 1)).astype(np.int32)
        elif fmt.name in ("u8", "u8p"):
            arr = (block * 127 + 128).astype(np.uint8)
        else:
            arr = block.astype(np.float32)
        if not fmt.is_planar:
            arr = arr.T.reshape(1, -1)  # packed: interleaved in one plane
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt.name, layout=layout)
        af.sample_rate = rate
        af.pts = start
        af.time_base = Fraction(1, rate)
        out.mux(stream.encode(af))
    out.mux(stream.encode(None))
    out.close()
    return data


def write_empty_wav(path: Path, rate: int = 16000) -> Path:
    """A valid WAV header with zero samples."""
    out = av.open(str(path), mode="w", format="wav")
    stream = out.add_stream("pcm_s16le", rate=rate)
    stream.codec_context.layout = "mono"
    out.start_encoding()  # header only: nothing is muxed
    out.close()
    return path


def write_image(path: Path, width: int = 40, height: int = 30) -> np.ndarray:
    """A still image (jpg/png/webp by suffix); returns the BGR pixels written."""
    codec, pix_fmt = {
        ".png": ("png", "rgb24"),
        ".jpg": ("mjpeg", "yuvj444p"),
        ".webp": ("libwebp", "yuv420p"),
    }[path.suffix]
    image = index_frame(5, width, height)
    out = av.open(str(path), mode="w", format="image2")
    stream = out.add_stream(codec, rate=1)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if codec == "libwebp":
        stream.options = {"lossless": "1"}
    vf = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format=pix_fmt)
    out.mux(stream.encode(vf))
    out.mux(stream.encode(None))
    out.close()
    return image


def box_order(path: Path) -> list[tuple[bytes, int]]:
    """Top-level MP4 boxes (type, offset) in file order."""
    data = path.read_bytes()
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        boxes.append((kind, pos))
        if size < 8:
            break
        pos += size
    return boxes


def write_offset_clip(
    path: Path,
    *,
    video_start: float = 0.852,
    audio_start: float = 0.008,
    frames: int = 60,
    fps: int = 25,
    audio_seconds: float = 3.3,
    beep_at: float = 1.5,
    rate: int = 16000,
    size: tuple[int, int] = (64, 48),
    frame_at=None,
) -> Path:
    """An MP4 whose streams start at different times (as phone and screen recordings do): index frames
    from ``video_start``, and from ``audio_start`` silence with a 0.1 s 1 kHz beep at file time ``beep_at``.
    ``frame_at(i)`` (a BGR frame of ``size``) replaces the index frames.
    """
    width, height = size
    frame_at = frame_at or (lambda i: index_frame(i, width, height))
    out = av.open(str(path), mode="w")
    vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    vs.codec_context.time_base = Fraction(1, fps * 100)
    aus = out.add_stream("aac", rate=rate)
    aus.codec_context.layout = "mono"
    offset = round(video_start * fps * 100)
    for i in range(frames):
        vf = av.VideoFrame.from_ndarray(frame_at(i), format="bgr24").reformat(format="yuv420p")
        vf.pts, vf.time_base = offset + i * 100, Fraction(1, fps * 100)
        out.mux(vs.encode(vf))
    out.mux(vs.encode(None))
    n = round(audio_seconds * rate)
    t = audio_start + np.arange(n) / rate
    sound = np.where((t >= beep_at) & (t < beep_at + 0.1), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
    sound = sound.astype(np.float32)
    first = round(audio_start * rate)
    for start in range(0, n, 1024):
        af = av.AudioFrame.from_ndarray(sound[None, start : start + 1024].copy(), format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = rate, first + start, Fraction(1, rate)
        out.mux(aus.encode(af))
    out.mux(aus.encode(None))
    out.close()
    return path


def beep_onset(path: Path, rate: int = 16000) -> float:
    """Seconds from the start of ``path``'s decoded audio to the first sample louder than 0.1."""
    from lipsync.media import decode_audio

    audio = decode_audio(path, sample_rate=rate)
    loud = np.flatnonzero(np.abs(audio) > 0.1)
    return float(loud[0] / rate) if loud.size else float("nan")
