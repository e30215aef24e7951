"""A job's input files, checked from their headers before any work: what the CLI and the pipeline run
first, so a bad file fails in a second, before models load or frames decode."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lipsync.errors import MediaError
from lipsync.media._headers import image_size
from lipsync.media._open import check_exists
from lipsync.media.info import MediaInfo, probe
from lipsync.media.limits import MediaLimits, check_declared_size, check_output_frames


def probe_input(
    path: str | os.PathLike[str],
    limits: MediaLimits,
    field: str,
    *,
    need: Literal["video", "audio"] | None = None,
) -> MediaInfo:
    """``probe`` with the error naming ``field`` (the option or request field the file came from), and
    the stream ``need`` required. Missing files and directories get the same words as everywhere."""
    try:
        check_exists(path, field)
        info = probe(path, limits)
        if need == "video":
            info.require_video()
        elif need == "audio":
            info.require_audio()
        return info
    except MediaError as exc:
        if exc.field is None:
            exc.field = field
        raise


@dataclass(frozen=True)
class JobMedia:
    video: MediaInfo
    audio: MediaInfo | None  # the main audio; None when only the characters' stems drive the job
    output_frames: int  # what the audio's declared length gives at the video's decode rate


def check_job_media(
    video: str | os.PathLike[str], audio: str | os.PathLike[str] | None, limits: MediaLimits,
    stems: Sequence[tuple[str | os.PathLike[str], str]] = (),
) -> JobMedia:
    """Probe a lip-sync job's inputs and bound its output: frames = the longest driving track's length x
    the video's decode rate, at most ``max_duration_s`` of them. Refuses over-limit, damaged (cut WAV),
    wrong-rate or stream-less inputs before a frame is decoded. ``stems``: the characters' own tracks,
    as (path, field); the main ``audio`` may be None when every character has one."""
    vinfo = probe_input(video, limits, "video", need="video")
    tracks = ([(audio, "audio")] if audio is not None else []) + list(stems)
    infos = [probe_input(path, limits, field, need="audio") for path, field in tracks]
    seconds = max((i.audio_duration if i.audio_duration is not None else i.duration) for i in infos) if infos else 0
    frames = math.ceil(seconds * vinfo.fps)
    check_output_frames(frames, vinfo.fps, limits)
    return JobMedia(vinfo, infos[0] if infos else None, frames)


def check_image_header(path: str | os.PathLike[str], limits: MediaLimits, field: str = "characters") -> None:
    """Refuse a still image whose header declares more than the size limits, before it is decoded by
    anything (OpenCV's own cap is a gigapixel: 3 GB of BGR). Images whose header we do not read pass."""
    p = Path(path)
    size = image_size(p)
    if size is None:
        return
    try:
        check_declared_size(p, limits, *size)
    except MediaError as exc:
        exc.field = field
        raise
