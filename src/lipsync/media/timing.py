"""Frame counts and rates from packet timestamps (index or packet headers; nothing is decoded)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.stream
import numpy as np

from lipsync.errors import CorruptMedia
from lipsync.media._open import corrupt_partway, open_input

# An interval this far from the typical one (relative) makes a stream variable-frame-rate. Timestamps
# stored at millisecond precision (Matroska) jitter by one tick around 1/29.97 s; that must stay CFR.
_VFR_TOLERANCE = 0.10


@dataclass(frozen=True)
class Timing:
    count: int
    duration: Fraction | None  # seconds from the first frame to the end of the last
    is_vfr: bool


def _timing_from_timestamps(ts: np.ndarray, last_duration: int, time_base: Fraction) -> Timing:
    ts = np.unique(ts)  # sorted, deduplicated (B-frame reordering, repeated entries)
    if ts.size == 0:
        return Timing(0, None, False)
    steps = np.diff(ts)
    is_vfr = False
    if steps.size:
        typical = float(np.median(steps))
        # Allow a one-tick jitter (coarse time bases) on top of the relative tolerance.
        slack = max(typical * _VFR_TOLERANCE, 1.0)
        is_vfr = bool(np.any(np.abs(steps - typical) > slack))
        if last_duration <= 0:
            last_duration = round(typical)
    span = int(ts[-1] - ts[0]) + max(last_duration, 0)
    return Timing(int(ts.size), span * Fraction(time_base), is_vfr)


def scan_timing(path: Path, stream_index: int) -> Timing:
    """Read every video packet header (no decoding) when the container has no complete index."""
    container = open_input(path)
    try:
        stream = container.streams[stream_index]
        time_base = stream.time_base or Fraction(1, 1)
        stamps: list[int] = []
        last_duration = 0
        packets = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    continue
                stamps.append(ts)
                if packet.duration:
                    last_duration = packet.duration
        except av.FFmpegError as exc:
            raise corrupt_partway(path, "reading video packets", exc, field="video") from exc
        if not stamps:  # raw elementary streams (.h264) carry no timestamps: count packets instead
            return Timing(packets, None, False)
        # The packet that ends last carries the last duration; good enough for the span estimate.
        return _timing_from_timestamps(np.asarray(stamps, dtype=np.int64), last_duration, time_base)
    finally:
        container.close()


def index_timing(stream: av.stream.Stream) -> Timing | None:
    """MP4/MOV keep a full sample table; reading it is free. Other demuxers index keyframes only."""
    try:
        entries = stream.index_entries
        n = len(entries)
    except (AttributeError, av.FFmpegError):
        return None
    if n == 0 or stream.frames <= 0 or n < stream.frames:
        return None
    ts = np.fromiter((e.timestamp for e in entries if not e.is_discard), dtype=np.int64, count=-1)
    return _timing_from_timestamps(ts, 0, stream.time_base or Fraction(1, 1))


def average_fps(stream: av.stream.Stream, timing: Timing, span: Fraction | None) -> Fraction:
    """The rate frames are decoded at: the stream's average, exact where the header allows."""
    avg = stream.average_rate
    base = stream.base_rate
    measured = Fraction(timing.count) / span if timing.count and span else None
    if measured is not None and measured.denominator > 1_000_000:
        measured = measured.limit_denominator(1_000_000)
    if timing.is_vfr and measured is not None:
        # Some demuxers (Matroska) report the nominal rate as the average; the CFR rate we decode at
        # must be frames / duration, so trust the header only when it agrees with the timestamps.
        if avg and avg > 0 and abs(Fraction(avg) - measured) <= measured / 1000:
            return Fraction(avg)
        return measured
    if (not avg or avg <= 0) and measured is not None:
        avg = measured.limit_denominator(100_000)
    if not avg or avg <= 0:
        avg = stream.guessed_rate or base
    if not avg or avg <= 0:
        raise CorruptMedia("the video stream has no usable frame rate; re-encode it with a fixed frame rate.")
    avg = Fraction(avg)
    # For constant-rate streams prefer the nominal rate: an average derived from millisecond timestamps
    # comes out as 2997/100 where the stream really is 30000/1001.
    if not timing.is_vfr and base and base > 0 and abs(float(base) - float(avg)) <= 0.002 * float(avg):
        return Fraction(base)
    return avg
