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
    # Visible-face masks for the 96x96 crops (the occlusion-aware mask); None: the plain lower-face mask.
    occlusion: OcclusionMasker | None = None


@dataclass(frozen=True)
class FaceJob:
    slot: int  # index of the frame within the current batch
    character: int  # index into tracks
    box: Box  # the integer paste region inside the frame (the padded box when the face is upright)
    landmarks: np.ndarray
    crop: FaceCrop | None = None  # the aligned crop; None: the upright crop of ``box``

    @property
    def aligned(self) -> FaceCrop:
        if self.crop is not None:
            return self.crop
        x1, y1 = int(self.box.x1), int(self.box.y1)
        matrix = np.array([[1.0, 0.0, -x1], [0.0, 1.0, -y1]])
        return FaceCrop(matrix, int(self.box.width), int(self.box.height), self.box, 0.0)
