"""``probe``: what a media file holds, as the rest of lipsync needs it (CFR frame count, display size...)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.container
import av.stream
import numpy as np

from lipsync.errors import CorruptMedia, MediaTooLarge, NoAudioStream, NoVideoStream
from lipsync.media._open import (
    ANY_MEDIA_HINT,
    AUDIO_HINT,
    VIDEO_HINT,
    corrupt_partway,
    display_name,
    open_input,
)

DEFAULT_IMAGE_FPS = Fraction(25)

# Demuxers that read single still images. (Animated GIF has its own demuxer and counts as video.)
_IMAGE_FORMATS = {"image2", "image2pipe"}

# An interval this far from the typical one (relative) makes a stream variable-frame-rate. Timestamps
# stored at millisecond precision (Matroska) jitter by one tick around 1/29.97 s; that must stay CFR.
_VFR_TOLERANCE = 0.10


@dataclass(frozen=True)
class MediaLimits:
    """What the service accepts. Display size is checked (a rotated 4096x2160 clip is 2160 wide)."""

    max_width: int = 4096
    max_height: int = 4096
    max_duration_s: float = 10800.0

    @classmethod
    def from_settings(cls, settings) -> MediaLimits:
        """The limits a ``lipsync.config.Settings`` (or anything with its three fields) configures."""
        return cls(settings.max_width, settings.max_height, settings.max_duration_s)


@dataclass(frozen=True)
class MediaInfo:
    """Facts about one file. ``fps``/``num_frames`` describe the constant-frame-rate decode lipsync does."""

    path: Path
    duration: float  # container duration in seconds (the longest stream), as ffprobe reports it
    has_video: bool
    is_image: bool
    width: int  # as stored (0 without video)
    height: int
    display_width: int  # after rotation
    display_height: int
    rotation: int  # clockwise degrees to apply for display: 0, 90, 180 or 270
    fps: Fraction  # average frame rate (exact); the CFR rate frames are decoded at; 0 without video
    is_vfr: bool
    num_frames: int  # frames iter_frames() yields
    pix_fmt: str | None
    video_codec: str | None
    has_audio: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    audio_duration: float | None
    audio_codec: str | None = None
    video_duration: float = 0.0  # num_frames / fps
    source_frames: int = 0  # frames stored in the stream (differs from num_frames for VFR input)
    # Where CFR frame 0 sits: the first decoded frame's pts, in the stream's time base. Needed to seek.
    start_pts: int = 0
    time_base: Fraction = Fraction(1, 1)
    format_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["fps"] = _fraction_str(self.fps)
        out["time_base"] = _fraction_str(self.time_base)
        out["fps_float"] = float(self.fps)
        return out

    def require_video(self) -> MediaInfo:
        if not self.has_video:
            raise NoVideoStream(f"{display_name(self.path)} has no video stream. {VIDEO_HINT}", field="video")
        return self

    def require_audio(self) -> MediaInfo:
        if not self.has_audio:
            raise NoAudioStream(f"{display_name(self.path)} has no audio stream. {AUDIO_HINT}", field="audio")
        return self


def _fraction_str(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def pick_video_stream(container: av.container.InputContainer) -> av.stream.Stream | None:
    """The first real video stream; cover art embedded in audio files (attached_pic) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def pick_audio_stream(container: av.container.InputContainer) -> av.stream.Stream | None:
    return container.streams.audio[0] if container.streams.audio else None


def is_image_container(container: av.container.InputContainer) -> bool:
    name = container.format.name
    return name in _IMAGE_FORMATS or name.endswith("_pipe")


def _rotation_from(frame: av.VideoFrame, stream: av.stream.Stream) -> int:
    # The display matrix (modern MP4/MOV, also copied onto decoded frames) gives a counter-clockwise
    # angle; the legacy "rotate" tag (old MOV, some MKV) gives the clockwise one. We report clockwise.
    ccw = round(frame.rotation or 0)
    if ccw:
        return (-ccw) % 360
    tag = {k.lower(): v for k, v in stream.metadata.items()}.get("rotate")
    if tag:
        try:
            return round(float(tag)) % 360
        except ValueError:
            return 0
    return 0


def _first_frame(
    container: av.container.InputContainer, stream: av.stream.Stream, path: Path
) -> av.VideoFrame:
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                return frame
    except av.FFmpegError as exc:
        raise corrupt_partway(path, "first video frame", exc) from exc
    raise CorruptMedia(
        f"{display_name(path)} has a video stream with no decodable frames. Re-export or re-download it."
    )


@dataclass(frozen=True)
class _Timing:
    count: int
    duration: Fraction | None  # seconds from the first frame to the end of the last
    is_vfr: bool


def _timing_from_timestamps(ts: np.ndarray, last_duration: int, time_base: Fraction) -> _Timing:
    ts = np.unique(ts)  # sorted, deduplicated (B-frame reordering, repeated entries)
    if ts.size == 0:
        return _Timing(0, None, False)
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
    return _Timing(int(ts.size), span * Fraction(time_base), is_vfr)


def _scan_timing(path: Path, stream_index: int) -> _Timing:
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
            raise corrupt_partway(path, "reading video packets", exc) from exc
        if not stamps:  # raw elementary streams (.h264) carry no timestamps: count packets instead
            return _Timing(packets, None, False)
        # The packet that ends last carries the last duration; good enough for the span estimate.
        return _timing_from_timestamps(np.asarray(stamps, dtype=np.int64), last_duration, time_base)
    finally:
        container.close()


def _index_timing(stream: av.stream.Stream) -> _Timing | None:
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


def _average_fps(stream: av.stream.Stream, timing: _Timing, span: Fraction | None) -> Fraction:
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


def _check_limits(path: Path, limits: MediaLimits, width: int, height: int, duration: float) -> None:
    if width > limits.max_width or height > limits.max_height:
        raise MediaTooLarge(
            f"{display_name(path)} is {width}x{height}; the limit is {limits.max_width}x{limits.max_height}. "
            "Downscale it (e.g. to 1920x1080) or raise LIPSYNC_MAX_WIDTH / LIPSYNC_MAX_HEIGHT."
        )
    if duration > limits.max_duration_s:
        raise MediaTooLarge(
            f"{display_name(path)} lasts {duration:.1f} s; the limit is {limits.max_duration_s:.0f} s. "
            "Cut it into shorter parts or raise LIPSYNC_MAX_DURATION_S."
        )


def probe(
    path: str | os.PathLike[str],
    limits: MediaLimits | None = None,
    image_fps: Fraction | int = DEFAULT_IMAGE_FPS,
) -> MediaInfo:
    """Inspect ``path``. Reads headers, the first video frame and (only without a full index) packet
    headers; never decodes the whole stream. Raises the lipsync.errors media errors."""
    limits = limits or MediaLimits()
    image_fps = Fraction(image_fps)
    p = Path(path)
    container = open_input(p)
    try:
        vstream = pick_video_stream(container)
        astream = pick_audio_stream(container)
        if vstream is None and astream is None:
            raise NoVideoStream(
                f"{display_name(p)} has neither a video nor an audio stream. {ANY_MEDIA_HINT}"
            )
        container_duration = container.duration / av.time_base if container.duration else None

        # --- audio --------------------------------------------------------------------------------
        a_rate = a_channels = None
        a_duration = a_codec = None
        if astream is not None:
            actx = astream.codec_context
            a_rate = int(actx.sample_rate or 0) or None
            a_channels = int(actx.layout.nb_channels) if actx.layout else None
            a_codec = actx.name
            if astream.duration is not None and astream.time_base:
                a_duration = float(astream.duration * astream.time_base)
            elif container_duration is not None:
                a_duration = container_duration

        # --- video --------------------------------------------------------------------------------
        width = height = 0
        rotation = 0
        fps = Fraction(0)
        is_vfr = is_image = False
        num_frames = source_frames = 0
        pix_fmt = v_codec = None
        start_pts = 0
        time_base = Fraction(1, 1)
        video_duration = 0.0
        if vstream is not None:
            vctx = vstream.codec_context
            v_codec = vctx.name
            is_image = is_image_container(container)
            vstream.thread_type = "AUTO"
            first = _first_frame(container, vstream, p)
            width, height = int(first.width), int(first.height)
            pix_fmt = first.format.name
            rotation = _rotation_from(first, vstream)
            time_base = vstream.time_base or Fraction(1, 1)
            start_pts = int(first.pts) if first.pts is not None else 0
            if is_image:
                fps, num_frames, source_frames = image_fps, 1, 1
            else:
                timing = _index_timing(vstream) or _scan_timing(p, vstream.index)
                is_vfr = timing.is_vfr
                if vstream.duration is not None and vstream.duration > 0:
                    span = vstream.duration * Fraction(time_base)
                elif timing.duration:
                    span = timing.duration
                elif container_duration:
                    span = Fraction(container_duration).limit_denominator(1_000_000)
                else:
                    span = None
                fps = _average_fps(vstream, timing, span)
                source_frames = timing.count or int(vstream.frames or 0)
                if not span:
                    span = Fraction(source_frames) / fps
                num_frames = max(1, math.floor(span * fps + Fraction(1, 2)))
            video_duration = float(num_frames / fps)

        swap = rotation in (90, 270)
        display_w, display_h = (height, width) if swap else (width, height)
        duration = container_duration
        if duration is None:
            duration = max(video_duration, a_duration or 0.0)
        info = MediaInfo(
            path=p,
            duration=float(duration),
            has_video=vstream is not None,
            is_image=is_image,
            width=width,
            height=height,
            display_width=display_w,
            display_height=display_h,
            rotation=rotation,
            fps=fps,
            is_vfr=is_vfr,
            num_frames=num_frames,
            pix_fmt=pix_fmt,
            video_codec=v_codec,
            has_audio=astream is not None,
            audio_sample_rate=a_rate,
            audio_channels=a_channels,
            audio_duration=a_duration,
            audio_codec=a_codec,
            video_duration=video_duration,
            source_frames=source_frames,
            start_pts=start_pts,
            time_base=Fraction(time_base),
            format_name=container.format.name,
        )
    finally:
        container.close()
    _check_limits(p, limits, info.display_width, info.display_height, max(info.duration, video_duration))
    return info
