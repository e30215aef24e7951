"""Streaming video decode at a constant frame rate, and random access on top of it.

The mapping from source frames to output frames is defined once, in ``_cfr``: output frame *i* (at
time i/fps after the first frame) shows the latest source frame whose timestamp rounds to a slot <= i.
That duplicates frames across gaps and drops frames that share a slot, exactly as FFmpeg's ``fps``
filter does. iter_frames and FrameReader both use it, so reader[i] == list(iter_frames())[i].
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync.errors import CorruptMedia
from lipsync.media._open import corrupt_partway, display_name, open_input
from lipsync.media.info import DEFAULT_IMAGE_FPS, MediaInfo, pick_video_stream, probe

# A decode that ends this much earlier than the stream's declared end is a truncated file, not a
# rounding difference (seconds; or three frames at low frame rates).
_SHORT_TOLERANCE_S = 0.2

_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class _Overshoot(Exception):
    """A seek landed after the wanted frame; the caller seeks earlier."""


def to_bgr(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """A decoded frame as a fresh HxWx3 uint8 BGR array in display orientation."""
    array = frame.to_ndarray(format="bgr24")
    if rotation in _ROTATE:
        array = cv2.rotate(array, _ROTATE[rotation])
    return np.ascontiguousarray(array)


def _decoded(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.FFmpegError as exc:
        raise corrupt_partway(path, "decoding video", exc, field="video") from exc


def _cfr(
    frames: Iterator[av.VideoFrame], info: MediaInfo, start: int, stop: int
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(output index, source frame) for start <= index < stop. See the module docstring."""
    scale = info.time_base * info.fps  # pts ticks -> output frame slots
    half = Fraction(1, 2)
    prev: av.VideoFrame | None = None
    prev_end: Fraction | None = None  # seconds after frame 0 where the last source frame ends
    prev_slot = start
    nxt = start
    for frame in frames:
        if frame.pts is None:
            # No timestamp (rare raw streams): assume it follows the previous one at the nominal rate.
            slot = start if prev is None else prev_slot + 1
            t = Fraction(slot) / info.fps
        else:
            ticks = frame.pts - info.start_pts
            slot = math.floor(ticks * scale + half)
            t = ticks * info.time_base
        if prev is None and slot > start:
            raise _Overshoot
        while nxt < slot and nxt < stop:
            yield nxt, prev  # type: ignore[misc]  # prev is set: slot > nxt >= start only after frame 0
            nxt += 1
        if nxt >= stop:
            return
        prev, prev_slot = frame, slot
        # A resampled low-rate stream's frame lasts 1 / its own rate, not 1 / the decode rate.
        own_rate = info.stream_fps or info.fps
        length = frame.duration * info.time_base if frame.duration else 1 / own_rate
        prev_end = t + length
    if prev is None:
        raise CorruptMedia(
            f"{display_name(info.path)}: no video frames could be decoded at or after frame {start}. "
            "The file is probably truncated; re-export or re-download it.",
            field="video",
        )
    declared_end = Fraction(stop) / info.fps
    missing = declared_end - (prev_end or 0)
    if stop == info.num_frames and missing > max(Fraction(3) / info.fps, Fraction(_SHORT_TOLERANCE_S)):
        raise CorruptMedia(
            f"{display_name(info.path)} ends early: video stops at {float(prev_end or 0):.2f} s but the file "
            f"declares {float(declared_end):.2f} s. It is probably truncated; re-export or re-download it.",
            field="video",
        )
    while nxt < stop:
        yield nxt, prev
        nxt += 1


# Frame threads only: FFmpeg's AUTO adds slice threads on top, which cost CPU without speed here (the
# render's decode shares the cores): Chaplin's 210 frames took 0.33 CPU s with AUTO, 0.22 with FRAME,
# 0.21 single-threaded, at 0.19 / 0.14 / 0.21 s wall.
DECODE_THREADS = "FRAME"


def _iter_source(info: MediaInfo, start: int, stop: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """Open, seek near ``start`` (backing off when the seek lands too late) and run the CFR mapping."""
    path = info.path
    if start >= stop:
        return
    backoff = 0.0
    while True:
        container = open_input(path)
        try:
            stream = pick_video_stream(container)
            if stream is None:
                info.require_video()
            stream.thread_type = DECODE_THREADS  # type: ignore[union-attr]
            # The probe checked the first frame's size; a stream that grows midway stays bounded too.
            limit = max(1, 4 * info.display_width * info.display_height)
            stream.codec_context.options = {"max_pixels": str(limit)}  # type: ignore[union-attr]
            if info.is_image:
                for frame in _decoded(container, stream, path):
                    yield 0, frame
                    return
                raise CorruptMedia(
                    f"{display_name(path)}: the image could not be decoded. Re-save it.", field="video"
                )
            seek_s = float(Fraction(start) / info.fps) - backoff
            if start > 0 and seek_s > 0:
                target = info.start_pts + int(seek_s / float(info.time_base))
                try:
                    container.seek(target, stream=stream, backward=True, any_frame=False)
                except av.FFmpegError as exc:
                    raise corrupt_partway(path, f"seeking to {seek_s:.2f} s", exc, field="video") from exc
            mapped = _cfr(_decoded(container, stream, path), info, start, stop)
            try:
                first = next(mapped)
            except _Overshoot:
                if seek_s <= 0:
                    raise CorruptMedia(
                        f"{display_name(path)}: frame timestamps are inconsistent (the first frame is "
                        "after the stream start). Re-encode the file.",
                        field="video",
                    ) from None
                backoff = max(1.0, backoff * 2)
                continue
            except StopIteration:
                return
            yield first
            yield from mapped
            return
        finally:
            container.close()


def iter_frames(
    path: str | os.PathLike[str],
    *,
    info: MediaInfo | None = None,
    image_fps: Fraction | int = DEFAULT_IMAGE_FPS,
    start: int = 0,
) -> Iterator[np.ndarray]:
    """Yield info.num_frames - start BGR uint8 frames (display orientation, constant frame rate).

    Streaming: one decoded frame is held at a time, so memory does not grow with the clip's length.
    Raises NoVideoStream for audio-only files and CorruptMedia when the stream breaks partway.
    """
    info = info if info is not None else probe(path, image_fps=image_fps)
    info.require_video()
    for _, frame in _iter_source(info, max(0, start), info.num_frames):
        yield to_bgr(frame, info.rotation)


class FrameReader:
    """Random access by CFR frame index with a bounded cache of decoded blocks.

    Forward reads continue the open decoder. A jump forward seeks to the keyframe before the wanted
    block. A read backwards (pingpong turning back) seeks once and decodes the run of up to
    ``max_blocks`` blocks ending at the wanted one, since decoding from the keyframe passes through
    them anyway; the following backward reads are then cache hits.

    Memory is bounded whatever the clip's length: at most ``max_blocks`` blocks are kept, and a block
    holds ``block`` frames or fewer, so that the cache stays within ``max_bytes`` (large frames get
    smaller blocks: 1080p BGR is 6.2 MB a frame).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        info: MediaInfo | None = None,
        block: int = 32,
        *,
        max_blocks: int = 4,
        max_bytes: int = 384 * 1024 * 1024,
        image_fps: Fraction | int = DEFAULT_IMAGE_FPS,
    ) -> None:
        if block < 1 or max_blocks < 1:
            raise ValueError("block and max_blocks must be >= 1")
        self.info = (info if info is not None else probe(path, image_fps=image_fps)).require_video()
        frame_bytes = max(1, self.info.display_width * self.info.display_height * 3)
        self.block = max(1, min(block, max_bytes // (max_blocks * frame_bytes)))
        self.max_blocks = max_blocks
        self._cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._source: Iterator[tuple[int, av.VideoFrame]] | None = None
        self._source_next = -1  # the index the open source yields next
        self._last_index = -1
        self.seeks = 0  # how many times a new decoder position was opened (for tests and tuning)

    def __len__(self) -> int:
        return self.info.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get(index)

    def get(self, index: int) -> np.ndarray:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"frame {index} out of range (0..{n - 1})")
        b = index // self.block
        backward = index < self._last_index
        self._last_index = index
        frames = self._cache.get(b)
        if frames is not None:
            self._cache.move_to_end(b)
            return frames[index - b * self.block]
        first = b
        if backward and self._source_next != b * self.block:
            # Fill the cache with the blocks before ``b`` too: the next reads go that way.
            first = max(0, b - self.max_blocks + 1)
            while first < b and first in self._cache:
                first += 1
        for k in range(first, b + 1):
            self._store(k, self._load(k))
        return self._cache[b][index - b * self.block]

    def _store(self, b: int, frames: list[np.ndarray]) -> None:
        self._cache[b] = frames
        self._cache.move_to_end(b)
        while len(self._cache) > self.max_blocks:
            self._cache.popitem(last=False)

    def _load(self, b: int) -> list[np.ndarray]:
        lo = b * self.block
        hi = min(lo + self.block, len(self))
        if self._source is None or self._source_next != lo:
            self._close_source()
            self._source = _iter_source(self.info, lo, len(self))
            self.seeks += 1
        out: list[np.ndarray] = []
        for i, frame in self._source:
            out.append(to_bgr(frame, self.info.rotation))
            if i + 1 >= hi:
                break
        if len(out) != hi - lo:
            self._close_source()
            raise CorruptMedia(
                f"{display_name(self.info.path)}: frames {lo}..{hi - 1} could not be decoded.", field="video"
            )
        self._source_next = hi
        return out

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()  # type: ignore[attr-defined]  # generator: closes its container
        self._source = None
        self._source_next = -1

    def close(self) -> None:
        self._close_source()
        self._cache.clear()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.get(i)
