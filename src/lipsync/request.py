"""What one job runs on: its local input files and its validated options. Torch-free, so the job layer
and the API can build requests without loading the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lipsync.errors import MissingAudio
from lipsync.options import LipSyncOptions, TrackOptions
from lipsync.types import Character


@dataclass(frozen=True)
class LipSyncRequest:
    """One lip-sync job on local files. ``audio`` (the main track, and the output's sound when given) may
    be None only when every character has its own ``audio``; then their mix is the output's sound."""

    video: Path
    audio: Path | None
    output: Path
    characters: tuple[Character, ...] = ()
    options: LipSyncOptions = field(default_factory=LipSyncOptions)


@dataclass(frozen=True)
class TrackingRequest:
    """One tracking job (/face-tracking): the visual check is written to ``output``."""

    video: Path
    output: Path
    characters: tuple[Character, ...] = ()
    options: TrackOptions = field(default_factory=TrackOptions)


def check_audio_sources(has_main: bool, own_tracks: Sequence[tuple[str, bool]], *, field: str = "audio") -> None:
    """The main audio may be left out only when every character has a track of its own. ``own_tracks``:
    (character id, whether it has its own track) for each character. Raises MissingAudio naming ``field``."""
    if has_main:
        return
    if not own_tracks:
        raise MissingAudio(f"{field} is required (without characters the most prominent face follows it)",
                         field=field)  # fmt: skip
    lacking = [cid for cid, own in own_tracks if not own]
    if lacking:
        raise MissingAudio(
            f"{field} is required: character{'s' if len(lacking) > 1 else ''} "
            f"{', '.join(repr(c) for c in lacking)} {'have' if len(lacking) > 1 else 'has'} no audio track of "
            "their own; give the main audio, or a track for every character",
            field=field,
        )
