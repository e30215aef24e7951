"""What the renderer is given: a planned job (step 2 of the recipe) and, per batch, the faces to sync."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync.media import MediaInfo
from lipsync.types import Box, LoopMode, PlanFrame


@dataclass(frozen=True)
class RenderJob:
    """What the planning step learns about one request; everything later reads it."""

    video: Path
    info: MediaInfo
    fps: Fraction
    source_frames: int
    mode: LoopMode
    plan: Sequence[PlanFrame]
    needed: int  # leading source frames the plan uses (tracking reads only these)
    mel: np.ndarray  # (80, T) for the whole new audio
    # The track to mux is re-read from this file while encoding, never held: a 3-hour dub at 48 kHz
    # stereo would be GBs.
    audio: Path
    out_rate: int
    audio_offset: float = 0.0  # source_audio_offset: nonzero when the audio is the video's own sound


@dataclass(frozen=True)
class FaceJob:
    slot: int  # index of the frame within the current batch
    character: int  # index into tracks
    box: Box  # padded integer box inside the frame
    landmarks: np.ndarray
