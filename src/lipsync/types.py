"""Domain types shared by every layer. Choices are defined once here and reused by CLI, API and code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

LoopMode = Literal["none", "repeat", "pingpong", "crossfade"]
LOOP_MODES: tuple[str, ...] = get_args(LoopMode)

# What a synced face does while its speaker is silent (see lipsync.stages.silence).
SilenceMode = Literal["generate", "closed", "original"]
SILENCE_MODES: tuple[str, ...] = get_args(SilenceMode)

DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceChoice)

FaceBackendName = Literal["insightface", "dlib"]
FACE_BACKENDS: tuple[str, ...] = get_args(FaceBackendName)

Wav2LipVariant = Literal["wav2lip_gan", "wav2lip"]
WAV2LIP_VARIANTS: tuple[str, ...] = get_args(Wav2LipVariant)

# (top, bottom, left, right) in pixels, as in the brief (the default is a job setting: lipsync.options).
Pads = tuple[int, int, int, int]

# A character id, the same for the API and the CLI: it names the character in stats, tracks and errors.
CHARACTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
CHARACTER_ID_RULE = "1-64 characters: letters, digits, '_', '.', '-' (starting with a letter or digit)"


def is_character_id(value: str) -> bool:
    # fullmatch: "speaker\n" must not pass as "speaker" ($ would match before a final newline).
    return isinstance(value, str) and CHARACTER_ID.fullmatch(value) is not None




@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixel coordinates, x2/y2 exclusive."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def padded(self, pads: Pads, width: int, height: int) -> Box:
        """Grow by (top, bottom, left, right) pixels and clip to the frame, as integer pixels."""
        top, bottom, left, right = pads
        return Box(
            float(max(0, round(self.x1 - left))),
            float(max(0, round(self.y1 - top))),
            float(min(width, round(self.x2 + right))),
            float(min(height, round(self.y2 + bottom))),
        )

    def lerp(self, other: Box, t: float) -> Box:
        """The box ``t`` of the way from this one to ``other`` (0 gives this box, 1 gives ``other``)."""
        return Box(
            self.x1 + (other.x1 - self.x1) * t,
            self.y1 + (other.y1 - self.y1) * t,
            self.x2 + (other.x2 - self.x2) * t,
            self.y2 + (other.y2 - self.y2) * t,
        )

    def as_list(self) -> list[float]:
        return [float(self.x1), float(self.y1), float(self.x2), float(self.y2)]

    @classmethod
    def from_seq(cls, values) -> Box:
        x1, y1, x2, y2 = (float(v) for v in values)
        return cls(x1, y1, x2, y2)


@dataclass(frozen=True)
class Face:
    """One detected face. Landmarks are 5 points (eyes, nose, mouth corners) in x, y order."""

    box: Box
    landmarks: np.ndarray  # (5, 2) float32
    score: float
    embedding: np.ndarray | None = None  # L2-normalised identity vector, when computed


@dataclass(frozen=True)
class Character:
    """A person to lip-sync, named by one or more reference images (paths once downloaded)."""

    id: str
    name: str
    reference_images: tuple[Path, ...] = ()
    audio: Path | None = None  # the character's own driving track (a dub's stem); None: the main audio


@dataclass(frozen=True, slots=True)
class TrackPoint:
    frame: int
    box: Box
    landmarks: np.ndarray  # (5, 2) float32
    similarity: float
    interpolated: bool


@dataclass
class Track:
    """Where one character's face is, frame by frame. Frames without a point have no face."""

    character_id: str
    name: str
    points: dict[int, TrackPoint] = field(default_factory=dict)

    def get(self, frame: int) -> TrackPoint | None:
        return self.points.get(frame)

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, slots=True)
class PlanFrame:
    """One output frame of a loop plan: source frame ``src``, or a blend ``(1-weight)*src + weight*src2``."""

    src: int
    src2: int | None = None
    weight: float = 0.0

    @property
    def is_blend(self) -> bool:
        return self.src2 is not None and self.weight > 0.0
