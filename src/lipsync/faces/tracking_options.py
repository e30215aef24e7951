"""The knobs of the face tracker (lipsync.faces.tracking): the job's tracking settings plus internal tuning."""

from __future__ import annotations

from dataclasses import dataclass

from lipsync.options import SAMPLE_EVERY_BY_DEVICE, TrackOptions, resolve_sample_every
from lipsync.types import Pads

# The job settings this tracker takes; their defaults and ranges are declared once, in lipsync.options.
_JOB = TrackOptions()
_JOB_KNOBS = ("similarity_threshold", "temporal_smoothing", "sample_every", "shot_change_threshold",
              "detect_angles")  # fmt: skip


@dataclass(frozen=True)
class TrackingOptions:
    """Knobs of :func:`track_characters`. The user-facing ones are job settings declared in
    :mod:`lipsync.options` (their defaults are read from there; build from a job's settings with
    :meth:`from_job`); the rest are internal tuning. ``pads`` are carried for the pipeline (see
    :func:`pad_track`); tracks themselves hold unpadded face boxes."""

    similarity_threshold: float = _JOB.similarity_threshold
    temporal_smoothing: float = _JOB.temporal_smoothing
    sample_every: int = SAMPLE_EVERY_BY_DEVICE["cuda"]  # the job's default is per device: from_job
    pads: Pads = _JOB.pads_tuple
    # Bhattacharyya distance between consecutive thumbnails' HSV histograms above which a cut is declared.
    # Measured on the shared talking-head clips: <= 0.063 within a shot, >= 0.8 across clips. A missed cut
    # costs wrong boxes for up to sample_every frames, a false one a single extra detection: err low.
    shot_change_threshold: float = _JOB.shot_change_threshold
    detect_angles: str = _JOB.detect_angles
    refine_transitions: bool = True
    continuity_iou: float = 0.5
    continuity_margin: float = 0.1
    iou_bonus: float = 0.1
    # Frames kept between samples for the appear/disappear search; with a larger sample_every only every
    # k-th frame is kept (the boundary is then found to within k frames, erring towards "absent").
    max_buffered_frames: int = 64

    @classmethod
    def from_job(cls, job: TrackOptions, device: str | None = None, **internal: object) -> TrackingOptions:
        """The tracker's knobs for a job's validated settings (plus any internal overrides); ``device``
        is the face backend's (``face_device``), which an unset ``sample_every`` depends on."""
        shared = {name: getattr(job, name) for name in _JOB_KNOBS}
        shared["sample_every"] = resolve_sample_every(job.sample_every, device)
        return cls(**{**shared, "pads": job.pads_tuple, **internal})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if not 0.0 <= self.similarity_threshold <= 1.0:
            raise ValueError(f"similarity_threshold must be within [0, 1], got {self.similarity_threshold}")
        if not 0.0 <= self.temporal_smoothing <= 1.0:
            raise ValueError(f"temporal_smoothing must be within [0, 1], got {self.temporal_smoothing}")
        if int(self.sample_every) < 1:
            raise ValueError(f"sample_every must be >= 1, got {self.sample_every}")
        if len(self.pads) != 4:
            raise ValueError("pads must be (top, bottom, left, right)")
        if not 0.0 < self.shot_change_threshold <= 1.0:
            raise ValueError("shot_change_threshold must be within (0, 1]")
        if self.max_buffered_frames < 1:
            raise ValueError("max_buffered_frames must be >= 1")
