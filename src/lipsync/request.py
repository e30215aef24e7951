"""What one job runs on: its local input files and its validated options. Torch-free, so the job layer
and the API can build requests without loading the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lipsync.options import LipSyncOptions, TrackOptions
from lipsync.types import Character


@dataclass(frozen=True)
class LipSyncRequest:
    """One lip-sync job on local files."""

    video: Path
    audio: Path
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
