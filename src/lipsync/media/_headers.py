"""Picture sizes read straight from still-image headers (PNG, JPEG, GIF, WebP, BMP), without FFmpeg.

FFmpeg only learns an image's size by decoding it (avformat_find_stream_info decodes the one frame), so
to name the declared size of an image over the limit, without paying for the decode, we read it here.
"""

from __future__ import annotations

import struct
from pathlib import Path

_HEAD_BYTES = 64 * 1024  # JPEG's SOF marker may follow EXIF/ICC segments; it is nearly always this early


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) declared by a still image's header, or None when it is not one we read."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    for reader in (_png, _gif, _webp, _bmp, _jpeg):
        size = reader(head)
        if size is not None:
            return size
    return None


def _png(b: bytes) -> tuple[int, int] | None:
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR" and len(b) >= 24:
        return struct.unpack(">II", b[16:24])
    return None


def _gif(b: bytes) -> tuple[int, int] | None:
    if b[:6] in (b"GIF87a", b"GIF89a") and len(b) >= 10:
        return struct.unpack("<HH", b[6:10])
    return None


def _bmp(b: bytes) -> tuple[int, int] | None:
    if b[:2] == b"BM" and len(b) >= 26 and struct.unpack("<I", b[14:18])[0] >= 40:
        w, h = struct.unpack("<ii", b[18:26])
        return abs(w), abs(h)
    return None


def _webp(b: bytes) -> tuple[int, int] | None:
    if b[:4] != b"RIFF" or b[8:12] != b"WEBP" or len(b) < 30:
        return None
    kind = b[12:16]
    if kind == b"VP8X":  # extended: 24-bit canvas size minus one
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    if kind == b"VP8L" and b[20] == 0x2F:  # lossless: 14-bit sizes minus one, packed
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and b[23:26] == b"\x9d\x01\x2a":  # lossy keyframe: 14-bit sizes
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


# Start-of-frame markers carrying the size (all SOFn but DHT, JPG and DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(b: bytes) -> tuple[int, int] | None:
    if b[:3] != b"\xff\xd8\xff":
        return None
    pos = 2
    while pos + 9 <= len(b):
        if b[pos] != 0xFF:
            return None
        marker = b[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", b[pos + 2 : pos + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", b[pos + 5 : pos + 9])
            return w, h
        pos += 2 + length
    return None


def wav_data_extent(path: Path) -> tuple[float, float] | None:
    """(seconds the RIFF/WAVE header declares, seconds the file really holds) for a PCM WAV, or None
    when the file is not a WAV or leaves its length open (streamed WAVs write 0 or 0xFFFFFFFF).

    FFmpeg silently clamps a WAV's duration to the bytes present, so a cut download would pass as a
    shorter, valid file; the header's data size is the promise to check it against."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        tag, length = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if tag == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack("<I", head[pos + 16 : pos + 20])[0]
        elif tag == b"data":
            if not byte_rate or length in (0, 0xFFFFFFFF):
                return None
            present = max(0, min(length, size - (pos + 8)))
            return length / byte_rate, present / byte_rate
        pos += 8 + length + (length & 1)  # chunks are word-aligned
    return None
