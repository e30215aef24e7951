"""Output frames from a loop plan, and where each character's face is in them.

A plan frame names one source frame, or a blend of two with a weight (crossfade). Blends are made here,
before generation, so the mouth drawn on a blended frame follows the audio like any other frame. The face of a
blended frame sits between its two sources' track points; when either source lacks the face, the frame passes
through for that character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np

from lipsync.types import PlanFrame, Track, TrackPoint

#: Anything that returns a source frame by index (lipsync.media.FrameReader, or a list in tests).
FrameGetter = Callable[[int], np.ndarray]


def blend_frames(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * a + weight * b, rounded, uint8."""
    return cv2.addWeighted(a, 1.0 - float(weight), b, float(weight), 0.0)


def render_plan_frame(get: FrameGetter, plan_frame: PlanFrame) -> np.ndarray:
    """The output picture for one plan frame (a fresh array the caller may modify)."""
    first = get(plan_frame.src)
    if plan_frame.is_blend:
        assert plan_frame.src2 is not None  # narrowed by is_blend
        return blend_frames(first, get(plan_frame.src2), plan_frame.weight)
    return np.array(first, copy=True)


def iter_plan_frames(get: FrameGetter, plan: Sequence[PlanFrame], start: int = 0) -> Iterator[np.ndarray]:
    for i in range(start, len(plan)):
        yield render_plan_frame(get, plan[i])


def point_for(track: Track, plan_frame: PlanFrame) -> TrackPoint | None:
    """The character's face in an output frame, or None (the frame passes through for it)."""
    first = track.get(plan_frame.src)
    if not plan_frame.is_blend:
        return first
    assert plan_frame.src2 is not None
    second = track.get(plan_frame.src2)
    if first is None or second is None:
        return None
    w = float(plan_frame.weight)
    landmarks = (
        first.landmarks.astype(np.float32) * (1.0 - w) + second.landmarks.astype(np.float32) * w
    ).astype(np.float32)
    return TrackPoint(
        frame=plan_frame.src,
        box=first.box.lerp(second.box, w),
        landmarks=landmarks,
        similarity=min(first.similarity, second.similarity),
        interpolated=True,
    )


def sources_needed(plan: Sequence[PlanFrame]) -> int:
    """How many leading source frames a plan touches (tracking stops there)."""
    top = -1
    for pf in plan:
        top = max(top, pf.src, pf.src2 if pf.src2 is not None else -1)
    return top + 1
