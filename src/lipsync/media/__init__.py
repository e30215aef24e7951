"""Media I/O with PyAV: probe, constant-frame-rate video decode, random access, audio decode, MP4 encode.

No shell commands are built: PyAV's wheels carry FFmpeg (libx264, aac, libswresample) in-process.
"""

from lipsync.errors import (
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
from lipsync.media.audio import decode_audio
from lipsync.media.decode import FrameReader, iter_frames, to_bgr
from lipsync.media.encode import VideoWriter, even_size
from lipsync.media.info import DEFAULT_IMAGE_FPS, MediaInfo, MediaLimits, probe

__all__ = [
    "DEFAULT_IMAGE_FPS",
    "CorruptMedia",
    "EmptyAudio",
    "EncodeError",
    "FrameReader",
    "MediaError",
    "MediaInfo",
    "MediaLimits",
    "MediaNotFound",
    "MediaTooLarge",
    "NoAudioStream",
    "NoVideoStream",
    "NotAMediaFile",
    "VideoWriter",
    "decode_audio",
    "even_size",
    "iter_frames",
    "probe",
    "to_bgr",
]
