"""Run statistics: per-character frame counts, blending methods, seconds per stage."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field


@dataclass
class CharacterStats:
    id: str
    name: str
    frames_synced: int = 0
    frames_passed_through: int = 0  # no face, or silent in silence=original mode
    speech_frames: int = 0  # output frames where this character's track has speech
    silent_frames: int = 0
    silence_mode: str = ""
    audio: str = "main"  # the track it follows: "main" or "own"
    vad: str = ""  # the voice activity detector that ran: "silero", or "energy" (the fallback)
    frames_rotated: int = 0  # synced through a turned (aligned) crop
    # synced with an estimated yaw or roll beyond lipsync.faces.pose's YAW/ROLL_LIMIT_DEG (warned)
    frames_beyond_pose_limit: int = 0


@dataclass
class PipelineStats:
    frames: int = 0
    source_frames: int = 0
    tracked_frames: int = 0  # source frames the tracker read (those the plan uses)
    fps: float = 0.0
    duration_s: float = 0.0
    loop_mode: str = ""
    device: str = ""
    batch_size: int = 0
    characters: dict[str, CharacterStats] = field(default_factory=dict)
    faces_synced: int = 0
    poisson: int = 0
    feather: int = 0
    enhanced: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    realtime_factor: float = 0.0

    def reset_render(self) -> None:
        """Forget the counts of a render that is done again."""
        self.characters.clear()
        self.faces_synced = self.poisson = self.feather = self.enhanced = 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["characters"] = [asdict(c) for c in self.characters.values()]
        out["stage_seconds"] = {k: round(v, 4) for k, v in self.stage_seconds.items()}
        # Frames per second of each stage; tracking is per source frame read, every other stage per output frame.
        out["stage_fps"] = {
            k: round((self.tracked_frames if k == "track" else self.frames) / v, 2)
            for k, v in self.stage_seconds.items()
            if v > 0 and self.frames and k not in ("load_models", "encode_wait")
        }
        return out


class StageTimer:
    """Adds up wall seconds per stage name (a stage with several workers adds up theirs)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
