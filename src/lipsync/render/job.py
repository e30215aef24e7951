"""What the renderer is given: a planned job (step 2 of the recipe) and, per batch, the faces to sync."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync.media import MediaInfo
from lipsync.stages.align_crop import FaceCrop
from lipsync.stages.occlusion import OcclusionMasker
from lipsync.stages.silence import VoicePlan
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
    voices: VoicePlan  # the driving tracks' mels and speech weights, and who follows which
    # The sound to mux is re-read from its file(s) while encoding, never held: a 3-hour dub at 48 kHz
    # stereo would be GBs. One path: the main audio; (path, field) pairs: the stems, mixed.
    audio: Path | tuple[tuple[Path, str], ...]
    out_rate: int
    audio_offset: float = 0.0  # source_audio_offset: nonzero when the audio is the video's own sound
    # Visible-face masks for the 96x96 crops (the occlusion-aware mask); None: the plain lower-face mask.
    occlusion: OcclusionMasker | None = None


@dataclass(frozen=True)
class FaceJob:
    slot: int  # index of the frame within the current batch
    character: int  # index into tracks
    box: Box  # the integer paste region inside the frame (the padded box when the face is upright)
    landmarks: np.ndarray
    weight: float = 1.0  # how much of the synced face shows; below 1 it fades toward the source (silence)
    crop: FaceCrop | None = None  # the aligned crop; None: the upright crop of ``box``

    @property
    def aligned(self) -> FaceCrop:
        if self.crop is not None:
            return self.crop
        x1, y1 = int(self.box.x1), int(self.box.y1)
        matrix = np.array([[1.0, 0.0, -x1], [0.0, 1.0, -y1]])
        return FaceCrop(matrix, int(self.box.width), int(self.box.height), self.box, 0.0)
