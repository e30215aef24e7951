"""Media I/O with PyAV: probe, constant-frame-rate video decode, random access, audio decode (whole or
streamed), MP4 encode.

No shell commands are built: PyAV's wheels carry FFmpeg (libx264, aac, libswresample) in-process.

Conventions:
* frames are HxWx3 uint8 BGR in display orientation (rotation already applied);
* ``MediaInfo.rotation`` is the clockwise turn applied for display (the legacy ``rotate`` tag's sense;
  a phone's portrait clip is 90);
* video is decoded at a constant rate, ``MediaInfo.fps`` (the stream's average; 25 for streams under
  10 fps, and over ``max_fps`` is refused: see ``media.limits``); frame *i* is the source frame showing
  at i/fps after the first frame, so VFR input is duplicated/dropped by timestamp;
* ``VideoWriter`` pads odd sizes by one replicated row/column (yuv420p needs even sizes) and tags the
  stream BT.709; its AAC track is cut or silence-padded to exactly frames / fps;
* audio of any length can flow from a file to the writer through an ``AudioSource`` without ever being
  held whole (``decode_audio`` is for when the whole array is needed, e.g. the mel spectrogram).
"""

from lipsync.errors import (
    BadFrameRate,
    CorruptMedia,
    EmptyAudio,
    EncodeError,
    MediaError,
    MediaNotFound,
    MediaTooLarge,
    NoAudioStream,
    NotAMediaFile,
    NoVideoStream,
)
from lipsync.media._open import check_exists, check_output_file
from lipsync.media.audio import AudioSource, decode_audio, iter_audio, source_audio_offset
from lipsync.media.decode import FrameReader, iter_frames, to_bgr
from lipsync.media.encode import VideoWriter, even_size
from lipsync.media.info import DEFAULT_IMAGE_FPS, MediaInfo, MediaLimits, probe
from lipsync.media.inputs import JobMedia, check_image_header, check_job_media, probe_input
from lipsync.media.limits import MIN_FPS, RESAMPLE_FPS, check_output_frames

__all__ = [
    "DEFAULT_IMAGE_FPS",
    "MIN_FPS",
    "RESAMPLE_FPS",
    "AudioSource",
    "BadFrameRate",
    "CorruptMedia",
    "EmptyAudio",
    "EncodeError",
    "FrameReader",
    "JobMedia",
    "MediaError",
    "MediaInfo",
    "MediaLimits",
    "MediaNotFound",
    "MediaTooLarge",
    "NoAudioStream",
    "NoVideoStream",
    "NotAMediaFile",
    "VideoWriter",
    "check_exists",
    "check_image_header",
    "check_job_media",
    "check_output_file",
    "check_output_frames",
    "decode_audio",
    "even_size",
    "iter_audio",
    "iter_frames",
    "probe",
    "probe_input",
    "source_audio_offset",
    "to_bgr",
]
