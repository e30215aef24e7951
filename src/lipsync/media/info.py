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

from lipsync.errors import CorruptMedia, NoAudioStream, NoVideoStream
from lipsync.media._headers import image_size
from lipsync.media._open import (
    ANY_MEDIA_HINT,
    AUDIO_HINT,
    VIDEO_HINT,
    check_complete,
    corrupt_partway,
    display_name,
    open_input,
)
from lipsync.media.limits import (
    MediaLimits,
    check_declared_size,
    check_duration,
    check_frame_rate,
    check_size,
    check_total_pixels,
    decode_rate,
)
from lipsync.media.timing import average_fps, index_timing, scan_timing

__all__ = ["DEFAULT_IMAGE_FPS", "MediaInfo", "MediaLimits", "pick_audio_stream", "pick_video_stream", "probe"]

DEFAULT_IMAGE_FPS = Fraction(25)

# Demuxers that read single still images. (Animated GIF has its own demuxer and counts as video.)
_IMAGE_FORMATS = {"image2", "image2pipe"}

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
    fps: Fraction  # the CFR rate frames are decoded at (exact): the stream's average, or RESAMPLE_FPS
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
    stream_fps: Fraction = Fraction(0)  # the stream's own average rate (differs from fps when resampled)
    # Where each stream starts on the file's timeline (seconds). Players line the streams up by these, so
    # whatever keeps the file's own sound must too (a clip's video may start 0.85 s after its audio).
    video_start: float = 0.0
    audio_start: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["fps"] = _fraction_str(self.fps)
        out["time_base"] = _fraction_str(self.time_base)
        out["stream_fps"] = _fraction_str(self.stream_fps)
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
    container: av.container.InputContainer, stream: av.stream.Stream, path: Path, limits: MediaLimits
) -> av.VideoFrame:
    # The decoder refuses a picture over the limit before allocating it (the header may not say its size).
    stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                return frame
    except av.FFmpegError as exc:
        raise corrupt_partway(path, "first video frame", exc) from exc
    raise CorruptMedia(
        f"{display_name(path)} has a video stream with no decodable frames. Re-export or re-download it."
    )


def _check_declared_size(path: Path, vstream: av.stream.Stream, limits: MediaLimits) -> tuple[int, int]:
    """The stored size the header declares (the codec parameters, else the image header), checked
    before anything is decoded."""
    width, height = int(vstream.codec_context.width or 0), int(vstream.codec_context.height or 0)
    if not (width and height):
        width, height = image_size(path) or (0, 0)
    check_declared_size(path, limits, width, height)
    return width, height


@dataclass
class _Video:
    width: int = 0
    height: int = 0
    rotation: int = 0
    fps: Fraction = Fraction(0)
    stream_fps: Fraction = Fraction(0)
    is_vfr: bool = False
    is_image: bool = False
    num_frames: int = 0
    source_frames: int = 0
    pix_fmt: str | None = None
    codec: str | None = None
    start_pts: int = 0
    time_base: Fraction = Fraction(1, 1)
    duration: float = 0.0
    start: float = 0.0


def _probe_video(
    container: av.container.InputContainer,
    vstream: av.stream.Stream,
    path: Path,
    limits: MediaLimits,
    image_fps: Fraction,
    container_duration: float | None,
) -> _Video:
    """The video facts, every limit checked from headers and packet timestamps before the first decode."""
    v = _Video(codec=vstream.codec_context.name, is_image=is_image_container(container))
    declared_w, declared_h = _check_declared_size(path, vstream, limits)
    v.time_base = Fraction(vstream.time_base or Fraction(1, 1))
    if v.is_image:
        v.fps = v.stream_fps = image_fps
        v.num_frames = v.source_frames = 1
    else:
        timing = index_timing(vstream) or scan_timing(path, vstream.index)
        v.is_vfr = timing.is_vfr
        if vstream.duration is not None and vstream.duration > 0:
            span = vstream.duration * v.time_base
        elif timing.duration:
            span = timing.duration
        elif container_duration:
            span = Fraction(container_duration).limit_denominator(1_000_000)
        else:
            span = None
        v.stream_fps = average_fps(vstream, timing, span)
        check_frame_rate(path, limits, v.stream_fps)
        v.fps = decode_rate(v.stream_fps)
        v.source_frames = timing.count or int(vstream.frames or 0)
        if not span:
            span = Fraction(v.source_frames) / v.stream_fps
        check_duration(path, limits, float(span))
        v.num_frames = max(1, math.floor(span * v.fps + Fraction(1, 2)))
        if declared_w and declared_h:
            check_total_pixels(path, limits, declared_w, declared_h, v.num_frames)
    vstream.thread_type = "AUTO"
    first = _first_frame(container, vstream, path, limits)
    v.width, v.height = int(first.width), int(first.height)
    v.pix_fmt = first.format.name
    v.rotation = _rotation_from(first, vstream)
    v.start_pts = int(first.pts) if first.pts is not None else 0
    v.start = float(v.start_pts * v.time_base)
    v.duration = float(v.num_frames / v.fps)
    return v


def _stream_start(stream: av.stream.Stream) -> float:
    if stream.start_time is None or not stream.time_base:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe(
    path: str | os.PathLike[str],
    limits: MediaLimits | None = None,
    image_fps: Fraction | int = DEFAULT_IMAGE_FPS,
) -> MediaInfo:
    """Inspect ``path``. Reads headers, the first video frame and (only without a full index) packet
    headers; never decodes the whole stream, and checks every limit it can from the headers before
    decoding that first frame. Raises the lipsync.errors media errors."""
    limits = limits or MediaLimits()
    image_fps = Fraction(image_fps)
    p = Path(path)
    container = open_input(p, max_pixels=limits.max_pixels)
    try:
        vstream = pick_video_stream(container)
        astream = pick_audio_stream(container)
        if vstream is None and astream is None:
            raise NoVideoStream(
                f"{display_name(p)} has neither a video nor an audio stream. {ANY_MEDIA_HINT}"
            )
        if container.format.name == "wav":
            check_complete(p)
        container_duration = container.duration / av.time_base if container.duration else None
        if container_duration is not None:
            check_duration(p, limits, container_duration)

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
        v = _Video()
        if vstream is not None:
            v = _probe_video(container, vstream, p, limits, image_fps, container_duration)

        swap = v.rotation in (90, 270)
        display_w, display_h = (v.height, v.width) if swap else (v.width, v.height)
        duration = container_duration
        if duration is None:
            duration = max(v.duration, a_duration or 0.0)
        info = MediaInfo(
            path=p,
            duration=float(duration),
            has_video=vstream is not None,
            is_image=v.is_image,
            width=v.width,
            height=v.height,
            display_width=display_w,
            display_height=display_h,
            rotation=v.rotation,
            fps=v.fps,
            is_vfr=v.is_vfr,
            num_frames=v.num_frames,
            pix_fmt=v.pix_fmt,
            video_codec=v.codec,
            has_audio=astream is not None,
            audio_sample_rate=a_rate,
            audio_channels=a_channels,
            audio_duration=a_duration,
            audio_codec=a_codec,
            video_duration=v.duration,
            source_frames=v.source_frames,
            start_pts=v.start_pts,
            time_base=v.time_base,
            format_name=container.format.name,
            stream_fps=v.stream_fps,
            video_start=v.start,
            audio_start=_stream_start(astream) if astream is not None else 0.0,
        )
    finally:
        container.close()
    check_size(p, limits, info.display_width, info.display_height)
    check_duration(p, limits, max(info.duration, info.video_duration))
    return info
