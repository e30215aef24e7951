"""The loop planner: which source frame (or blend of two) each output frame shows.

A pure function of (video frames V, audio frames A, mode, crossfade frames); nothing is decoded here. The
plan is a lazy ``Sequence[PlanFrame]``: ``plan[i]`` is computed on demand in O(1), so a 3-hour plan costs
no memory.

Length: A output frames, except ``"none"``, which gives min(V, A). In every mode, when V >= A the plan is
simply frames 0 .. A-1 (the video is trimmed to the audio, never blended or reversed).

When the audio is longer than the video (A > V):

``repeat``
    ``i % V``: 0, 1, .., V-1, 0, 1, ... (a visible jump V-1 -> 0 at each wrap).
``pingpong``
    forward then backward with period 2(V-1): 0, 1, .., V-1, V-2, .., 1, 0, 1, ...; the turning frames
    (V-1 and 0) are shown once per turn, never twice in a row. V == 1 shows frame 0 throughout.
``crossfade``
    With C = min(crossfade_frames, (V-1) // 2) (at least one plain frame per pass; C == 0 is ``repeat``):

    * first pass: plain frames 0 .. V-C-1;
    * then cycles of length L = V - C, each made of
        - C blends, k = 0 .. C-1: ``PlanFrame(src=V-C+k, src2=k, weight=(k+1)/(C+1))``, i.e. the last C
          frames of the video fade into its first C frames, the head's weight rising strictly inside (0, 1);
        - plain frames C .. V-C-1 (the head continues where the blend left it).

    So output never jumps: every step advances the tail track or the head track by exactly one frame
    (plain V-C-1 -> blend tail V-C; blend head C-1 -> plain C).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from lipsync.errors import InputError
from lipsync.types import LOOP_MODES, LoopMode, PlanFrame


def _count(value: object, field: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise InputError(f"{field} must be an integer, got {value!r}", field=field)
    try:
        number = operator.index(value)  # ints and numpy integers; floats are refused, not truncated
    except TypeError:
        raise InputError(f"{field} must be an integer, got {value!r}", field=field) from None
    if number < minimum:
        raise InputError(f"{field} must be at least {minimum}, got {number}", field=field)
    return number


@dataclass(frozen=True, eq=True)
class LoopPlan(Sequence[PlanFrame]):
    """The output frames of a loop, computed lazily. Build it with :func:`plan_loop`."""

    video_frames: int
    audio_frames: int
    mode: LoopMode
    crossfade: int  # effective C (0 unless mode == "crossfade" and the audio outlasts the video)

    def __len__(self) -> int:
        if self.mode == "none":
            return min(self.video_frames, self.audio_frames)
        return self.audio_frames

    @overload
    def __getitem__(self, index: int) -> PlanFrame: ...

    @overload
    def __getitem__(self, index: slice) -> list[PlanFrame]: ...

    def __getitem__(self, index: int | slice) -> PlanFrame | list[PlanFrame]:
        n = len(self)
        if isinstance(index, slice):
            return [self._frame(i) for i in range(*index.indices(n))]
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"plan index {index} out of range for {n} frames")
        return self._frame(i)

    def __iter__(self) -> Iterator[PlanFrame]:
        for i in range(len(self)):
            yield self._frame(i)

    @property
    def loops(self) -> bool:
        """True when the video is shorter than the audio and frames are revisited."""
        return self.mode != "none" and self.audio_frames > self.video_frames

    def _frame(self, i: int) -> PlanFrame:
        v = self.video_frames
        # Inside the first pass every mode shows the video as is (the crossfade's first blend excepted).
        if i < v and (self.mode != "crossfade" or not self.loops or i < v - self.crossfade):
            return PlanFrame(i)
        if self.mode == "repeat":
            return PlanFrame(i % v)
        if self.mode == "pingpong":
            if v == 1:
                return PlanFrame(0)
            j = i % (2 * (v - 1))
            return PlanFrame(j if j < v else 2 * (v - 1) - j)
        # crossfade
        c = self.crossfade
        if c == 0:
            return PlanFrame(i % v)
        k = (i - (v - c)) % (v - c)
        if k < c:
            return PlanFrame(v - c + k, k, (k + 1) / (c + 1))
        return PlanFrame(k)

    def sources(self, i: int) -> tuple[int, ...]:
        """The source frame indices output frame ``i`` needs (one, or two for a blend)."""
        frame = self[i]
        return (frame.src,) if frame.src2 is None else (frame.src, frame.src2)


def plan_loop(
    video_frames: int,
    audio_frames: int,
    mode: LoopMode,
    crossfade_frames: int = 10,
) -> LoopPlan:
    """Plan the output frames for a video of ``video_frames`` under an audio of ``audio_frames`` frames.

    Raises :class:`~lipsync.errors.InputError` (``field`` = ``video_frames``, ``audio_frames``, ``loop_mode``
    or ``crossfade_frames``) for invalid arguments. See the module docstring for each mode's definition.
    """
    v = _count(video_frames, "video_frames", 1)
    a = _count(audio_frames, "audio_frames", 0)
    if not isinstance(mode, str) or mode not in LOOP_MODES:
        raise InputError(f"loop_mode must be one of {', '.join(LOOP_MODES)}; got {mode!r}", field="loop_mode")
    cf = _count(crossfade_frames, "crossfade_frames", 0)
    c = min(cf, (v - 1) // 2) if mode == "crossfade" and a > v else 0
    return LoopPlan(video_frames=v, audio_frames=a, mode=mode, crossfade=c)
