"""What the service accepts, and the checks that hold inputs to it.

Every check here runs on facts read from headers (declared size, frame rate, frame count, duration), so
an input over a limit is refused before a single frame is decoded: a 0.7 MB PNG declaring 16000x16000
would otherwise cost 768 MB and seconds of CPU just to be told it is too large.

Frame rates. Video is decoded at a constant rate, normally the stream's own average. Above
``max_fps`` (default 240, the fastest phone slow motion) an input is refused (``bad_frame_rate``): a
header declaring 1,000,000 fps would turn one second of audio into a million output frames. Below
``MIN_FPS`` (10) the stream is resampled to ``RESAMPLE_FPS`` (25, the rate Wav2Lip was trained at, and the
one still images get): each source frame is shown for as long as it lasts in the source, so a 2-frame
clip at 1/1000 fps gives 25 frames a second of audio, not one frame lasting 1000 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from lipsync.errors import BadFrameRate, MediaTooLarge

#: Streams slower than this are decoded at RESAMPLE_FPS instead of their own rate.
MIN_FPS = Fraction(10)
#: The rate low-frame-rate streams (and still images) are decoded at.
RESAMPLE_FPS = Fraction(25)
DEFAULT_MAX_FPS = 240.0
# 3 hours of 4096x2160 at 30 fps: the largest job the default size and duration limits mean to allow.
DEFAULT_MAX_TOTAL_PIXELS = 4096 * 2160 * 30 * 10800


@dataclass(frozen=True)
class MediaLimits:
    """What the service accepts. Display size is checked (a rotated 4096x2160 clip is 2160 wide)."""

    max_width: int = 4096
    max_height: int = 4096
    max_duration_s: float = 10800.0
    max_fps: float = DEFAULT_MAX_FPS
    # width x height x frames of a video: bounds the decode work of one input whatever its shape.
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS

    @classmethod
    def from_settings(cls, settings) -> MediaLimits:
        """The limits a ``lipsync.config.Settings`` (or anything with its limit fields) configures."""
        return cls(
            settings.max_width,
            settings.max_height,
            settings.max_duration_s,
            getattr(settings, "max_fps", DEFAULT_MAX_FPS),
            getattr(settings, "max_total_pixels", DEFAULT_MAX_TOTAL_PIXELS),
        )

    @property
    def max_pixels(self) -> int:
        """The most pixels one picture may have (rotation-invariant): handed to FFmpeg's decoders, which
        then refuse a larger frame before allocating it."""
        return self.max_width * self.max_height

    def max_output_frames(self, fps: Fraction) -> int:
        """The most frames an output at ``fps`` may have: max_duration_s of them."""
        return math.ceil(self.max_duration_s * fps)


def _name(path: Path) -> str:
    return path.name or str(path)


def check_size(path: Path, limits: MediaLimits, width: int, height: int, *, declared: bool = False) -> None:
    if width > limits.max_width or height > limits.max_height:
        what = "declares a picture of" if declared else "is"
        raise MediaTooLarge(
            f"{_name(path)} {what} {width}x{height}; the limit is {limits.max_width}x{limits.max_height}. "
            "Downscale it (e.g. to 1920x1080) or raise LIPSYNC_MAX_WIDTH / LIPSYNC_MAX_HEIGHT."
        )


def check_declared_size(path: Path, limits: MediaLimits, width: int, height: int) -> None:
    """A stored size from a header, before any decode. Rotation is only known from a decoded frame, so
    here a size passes if it fits either way round; the display size is checked once a frame is in."""
    def fits(w: int, h: int) -> bool:
        return w <= limits.max_width and h <= limits.max_height

    if width and height and not (fits(width, height) or fits(height, width)):
        check_size(path, limits, width, height, declared=True)


def check_duration(path: Path, limits: MediaLimits, duration: float, *, what: str = "", hint: str = "") -> None:
    if duration > limits.max_duration_s:
        raise MediaTooLarge(
            f"{_name(path)}{what} lasts {duration:.1f} s; the limit is {limits.max_duration_s:.0f} s. "
            f"{hint or 'Cut it into shorter parts'} or raise LIPSYNC_MAX_DURATION_S."
        )


def check_frame_rate(path: Path, limits: MediaLimits, fps: Fraction) -> None:
    if fps > limits.max_fps:
        raise BadFrameRate(
            f"{_name(path)} declares {_rate(fps)} fps; the limit is {_rate(limits.max_fps)} fps. Re-encode it at "
            "a normal rate (e.g. 25 or 30 fps) or raise LIPSYNC_MAX_FPS."
        )


def _rate(fps: Fraction | float) -> str:
    return f"{float(fps):,.3f}".rstrip("0").rstrip(".")


def decode_rate(fps: Fraction) -> Fraction:
    """The constant rate a stream whose own average is ``fps`` is decoded at (see the module docstring)."""
    return RESAMPLE_FPS if fps < MIN_FPS else fps


def check_total_pixels(path: Path, limits: MediaLimits, width: int, height: int, frames: int) -> None:
    total = width * height * frames
    if total > limits.max_total_pixels:
        raise MediaTooLarge(
            f"{_name(path)} is {width}x{height} x {frames} frames = {total / 1e9:.1f} gigapixels to decode; "
            f"the limit is {limits.max_total_pixels / 1e9:.1f}. Use a shorter or smaller video, or raise "
            "LIPSYNC_MAX_TOTAL_PIXELS."
        )


def check_output_frames(frames: int, fps: Fraction, limits: MediaLimits, *, field: str = "audio") -> None:
    """An output of ``frames`` at ``fps`` must last no longer than max_duration_s."""
    cap = limits.max_output_frames(fps)
    if frames > cap:
        raise MediaTooLarge(
            f"the output would have {frames} frames at {float(fps):g} fps ({frames / float(fps):.1f} s); the limit is "
            f"{cap} ({limits.max_duration_s:.0f} s). Use a shorter audio or raise LIPSYNC_MAX_DURATION_S.",
            field=field,
        )
