"""The tracking step of a job: probe the video, track the characters over its frames, and fail with a
useful message when nobody is found. Shared by lip-sync jobs and /face-tracking."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lipsync.config import Settings
from lipsync.errors import MediaError, NoFaceFound
from lipsync.faces import FaceBackend, TrackingOptions, face_device, track_characters
from lipsync.media import MediaInfo, MediaLimits, iter_frames, probe
from lipsync.options import TrackOptions
from lipsync.stages.track_cache import TrackCache, backend_fingerprint, cache_key
from lipsync.types import Character, Track

#: (stage, done, total)
ProgressCallback = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class TrackingResult:
    info: MediaInfo
    tracks: list[Track]


def probe_video(path: Path, settings: Settings) -> MediaInfo:
    """Probe an input video within the configured limits; errors name the ``video`` field."""
    try:
        return probe(path, MediaLimits.from_settings(settings)).require_video()
    except MediaError as exc:
        raise exc.named("video") from None


def run_tracking(
    video: Path,
    info: MediaInfo,
    backend: FaceBackend,
    characters: Sequence[Character],
    options: TrackOptions,
    num_frames: int,
    report: ProgressCallback,
    *,
    cache: TrackCache | None = None,
    settings: Settings | None = None,
) -> list[Track]:
    """Track over the first ``num_frames`` frames (those a lip-sync plan uses, or all of them), with the
    streaming tracker; through ``cache`` when one is given (``settings`` name the face model files)."""
    # The tracker's defaults that depend on the device (detection stride) follow the face backend's.
    tracking = TrackingOptions.from_job(options, face_device(backend))
    key = None
    if cache is not None:
        key = cache_key(video, list(characters), tracking, backend_fingerprint(backend, settings), num_frames)
        cached = cache.get(key, num_frames)
        if cached is not None:
            report("track", num_frames, num_frames)
            return cached
    frames = itertools.islice(iter_frames(video, info=info), num_frames)
    tracks = track_characters(
        frames, backend, list(characters), tracking, num_frames=num_frames,
        progress=lambda done, total: report("track", done, total),
    )  # fmt: skip
    if cache is not None and key is not None and any(len(t) for t in tracks):
        cache.put(key, tracks)
    return tracks


def no_face_error(characters: Sequence[Character], threshold: float, backend: FaceBackend) -> NoFaceFound:
    if not characters:
        return NoFaceFound("no face was found anywhere in the video", field="video")
    names = ", ".join(f"{c.name!r} ({c.id})" for c in characters)
    lower = max(0.0, round(threshold - 0.1, 2))
    return NoFaceFound(
        f"none of the requested characters was found in the video: {names}, at similarity_threshold="
        f"{threshold:.2f} ({getattr(backend, 'name', 'face')} backend). Try lowering similarity_threshold "
        f"(e.g. to {lower:.2f}) or use a clearer, frontal reference image.",
        field="characters",
    )


def track_faces(
    video: Path,
    characters: Sequence[Character],
    options: TrackOptions,
    *,
    backend: FaceBackend,
    settings: Settings,
    progress: ProgressCallback | None = None,
    cache: TrackCache | None = None,
) -> TrackingResult:
    """Track characters over a whole video (the API's /face-tracking). Raises NoFaceFound when none is seen."""
    info = probe_video(Path(video), settings)
    tracks = run_tracking(
        Path(video), info, backend, characters, options, info.num_frames, progress or no_progress,
        cache=cache, settings=settings,
    )  # fmt: skip
    if not any(len(t) for t in tracks):
        raise no_face_error(characters, options.similarity_threshold, backend)
    return TrackingResult(info, tracks)
