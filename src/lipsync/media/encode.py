"""Streaming MP4 writer: H.264 (libx264, yuv420p) video plus an optional AAC track cut to the video.

Odd sizes: yuv420p stores colour per 2x2 block, so H.264 in that format needs even dimensions. We pad
the right column / bottom row by repeating the edge pixels (an odd 851x481 input becomes 852x482).
Padding keeps every source pixel and the face coordinates unchanged; the extra line is a copy of its
neighbour and is invisible. (Cropping would silently drop a row of the picture.)
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync.errors import EncodeError
from lipsync.media.audio import AudioSource
from lipsync.media.encoders import EncoderSettings

_AUDIO_CHUNK = 4096  # samples handed to the AAC encoder at a time (it re-frames to 1024)
_BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709
_RANGE_MPEG = 1  # AVCOL_RANGE_MPEG: limited (16-235) range, what every player expects from H.264


def even_size(width: int, height: int) -> tuple[int, int]:
    """The encoded size for a ``width`` x ``height`` picture (odd sizes grow by one pixel)."""
    return width + (width & 1), height + (height & 1)


class VideoWriter:
    """Write BGR frames one by one; the file is complete (and faststart) after ``close()``.

    ``codec`` is ``libx264`` (frame-threaded) or ``h264_nvenc`` (``crf`` is then its constant quality
    ``cq`` and ``preset`` maps onto p1..p7); ``x264_params``: x264 options on top of the preset (libx264);
    ``lipsync.media.encoders.resolve_encoder`` picks them per job.

    ``audio`` is muxed as AAC and trimmed or zero-padded to exactly frames_written / fps seconds. It is
    read sequentially and interleaved with the video while frames are written, so neither the writer
    nor the muxer ever holds the whole track. It is either

    * an ``AudioSource`` (e.g. ``AudioSource.open(path, rate, mono=False)``): streamed from the file,
      memory bounded by one decoded chunk. Its owner closes it, after this writer is closed (closing
      the writer reads the rest of the audio it needs); ``audio_rate``, if given, must equal its rate;
    * an array (float32 in [-1, 1] or int16, shape (n,) or (n, channels), channels 1 or 2) at
      ``audio_rate`` (16000 when not given): wrapped with ``AudioSource.from_array`` (no copy) and
      released by the writer itself.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: Fraction | int | float,
        *,
        crf: int = 18,
        preset: str = "medium",
        audio: np.ndarray | AudioSource | None = None,
        audio_rate: int | None = None,
        audio_bitrate: int = 128_000,
        threads: int = 0,
        codec: str = "libx264",
        x264_params: str = "",
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"invalid frame size {width}x{height}")
        if not 0 <= crf <= 51:
            raise ValueError("crf must be within 0..51")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1_000_000) if isinstance(fps, float) else Fraction(fps)
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        self.frames_written = 0
        self._closed = False
        self._audio, self._owns_audio = _audio_source(audio, audio_rate)
        self._audio_rate = self._audio.rate if self._audio is not None else int(audio_rate or 16000)
        self._audio_sent = 0  # samples handed to the encoder so far (including padding)

        enc_w, enc_h = even_size(self.width, self.height)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(
                str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"}
            )
            options = EncoderSettings(codec, crf, preset, x264_params).stream_options()  # type: ignore[arg-type]
            self._vstream = self._container.add_stream(codec, rate=self.fps, options=options)
            self._vstream.width, self._vstream.height = enc_w, enc_h
            self._vstream.pix_fmt = "yuv420p"
            # Convert with BT.709 and say so in the stream (VUI): untagged H.264 leaves players to guess,
            # and browsers guess 709 for HD, which shifts colours converted with swscale's 601 default.
            vctx = self._vstream.codec_context
            vctx.colorspace, vctx.color_primaries, vctx.color_trc = _BT709, _BT709, _BT709
            vctx.color_range = _RANGE_MPEG
            self._vstream.codec_context.time_base = 1 / self.fps
            if codec == "libx264":
                # Frame threads (x264's own, one frame per thread in flight) rather than PyAV's default
                # slice threads: same output size, more work per thread, less synchronisation.
                vctx.thread_type = "FRAME"
                vctx.thread_count = threads  # 0: x264 picks (1.5x the cores)
            self._astream = None
            if self._audio is not None:
                channels = self._audio.channels
                self._astream = self._container.add_stream("aac", rate=self._audio_rate)
                self._astream.codec_context.layout = "mono" if channels == 1 else "stereo"
                self._astream.codec_context.bit_rate = audio_bitrate
                self._astream.codec_context.time_base = Fraction(1, self._audio_rate)
            # Open the encoders now, so a bad preset or codec fails here and not at the first frame.
            self._container.start_encoding()
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._abort()
            raise EncodeError(f"cannot create {self.path}: {exc}") from exc

    # --- writing ----------------------------------------------------------------------------------

    def write(self, frame_bgr: np.ndarray) -> None:
        if self._closed:
            raise EncodeError("write() after close()")
        if frame_bgr.dtype != np.uint8 or frame_bgr.shape != (self.height, self.width, 3):
            raise ValueError(
                f"expected a {self.height}x{self.width}x3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}"
            )
        pad_b, pad_r = self.height & 1, self.width & 1
        if pad_b or pad_r:
            frame_bgr = cv2.copyMakeBorder(frame_bgr, 0, pad_b, 0, pad_r, cv2.BORDER_REPLICATE)
        # from_numpy_buffer wraps the array (from_ndarray would copy it first); the conversion makes the
        # encoder's own frame, so nothing keeps the array after this call.
        vf = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame_bgr), format="bgr24").reformat(
            format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG"
        )
        vf.pts = self.frames_written
        vf.time_base = self._vstream.codec_context.time_base
        try:
            self._container.mux(self._vstream.encode(vf))
            self.frames_written += 1
            self._feed_audio(self._audio_target(), final=False)
        except av.FFmpegError as exc:
            raise EncodeError(
                f"encoding frame {self.frames_written} of {self.path.name} failed: {exc}"
            ) from exc

    @property
    def duration(self) -> float:
        return float(self.frames_written / self.fps)

    def _audio_target(self) -> int:
        # Samples that belong to the frames written so far; the total is exact at close.
        return round(self.frames_written * self._audio_rate / self.fps)

    def _feed_audio(self, target: int, *, final: bool) -> None:
        if self._astream is None or self._audio is None:
            return
        # While streaming, hand over whole chunks only; at close, everything up to the exact target.
        while self._audio_sent < target and (final or target - self._audio_sent >= _AUDIO_CHUNK):
            n = min(_AUDIO_CHUNK, target - self._audio_sent)
            # Read in step with the frames: only this chunk of the track is ever in memory here. What
            # lies beyond the video's length is simply never read.
            chunk = self._audio.read(n)
            if chunk.shape[1] < n:  # the audio ran out: pad with silence to the video's length
                chunk = np.pad(chunk, ((0, 0), (0, n - chunk.shape[1])))
            chunk = np.clip(chunk, -1.0, 1.0)  # a copy: never writes into the source's buffer
            af = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk, dtype=np.float32),
                format="fltp",
                layout=self._astream.codec_context.layout,
            )
            af.sample_rate = self._audio_rate
            af.pts = self._audio_sent
            af.time_base = Fraction(1, self._audio_rate)
            self._container.mux(self._astream.encode(af))
            self._audio_sent += n

    # --- finishing --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.frames_written == 0:
            self._abort()
            raise EncodeError(f"no frames were written to {self.path.name}; nothing to encode.")
        try:
            self._container.mux(self._vstream.encode(None))
            if self._astream is not None:
                self._feed_audio(self._audio_target(), final=True)
                self._container.mux(self._astream.encode(None))
            self._container.close()
        except av.FFmpegError as exc:
            self._abort()
            raise EncodeError(f"finishing {self.path.name} failed: {exc}") from exc
        finally:
            self._release_audio()

    def _release_audio(self) -> None:
        # Only a source this writer made from an array is its to close; a caller's source is the caller's.
        if self._owns_audio and self._audio is not None:
            self._audio.close()

    def _abort(self) -> None:
        """Drop a half-written file so nobody mistakes it for a result."""
        self._closed = True
        container = getattr(self, "_container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        self._release_audio()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
        else:
            self.close()


def _audio_source(
    audio: np.ndarray | AudioSource | None, rate: int | None
) -> tuple[AudioSource | None, bool]:
    """The source to read and whether this writer owns it (True for an array it wrapped)."""
    if audio is None:
        return None, False
    if isinstance(audio, AudioSource):
        if audio.closed:
            raise ValueError("audio source is closed")
        if rate is not None and int(rate) != audio.rate:
            raise ValueError(f"audio_rate {rate} differs from the audio source's rate {audio.rate}")
        if audio.channels not in (1, 2):
            raise ValueError(f"audio must be mono or stereo, the source has {audio.channels} channels")
        return audio, False
    return AudioSource.from_array(audio, int(rate or 16000)), True
