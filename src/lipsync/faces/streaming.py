"""Streaming tracking: the tracker's points become final a bounded number of frames after they are read.

The batch tracker (:class:`lipsync.faces.tracking._Tracker`) decides everything at its end. This module
reads the same tracker as it goes and says, after each frame, up to which frame every track point is
final, so the renderer can start on a frame as soon as its faces are known and the video is decoded once.

Why a bounded look-ahead is enough (step numbers as in lipsync.faces.tracking):

* detection, identity assignment and the appear/disappear search (steps 2-4) for the frames up to the
  last regular sample ``F`` are fixed once ``F`` is sampled: later samples only add probes after ``F``;
* interpolation (step 5) between two probes ``p < q <= F`` needs nothing after ``q``;
* smoothing (step 6) is a zero-phase EMA over a run of consecutive frames, whose backward pass starts at
  the run's end. A frame ``L`` frames before the current end of a still-growing run is computed with the
  backward pass started there instead; the difference decays as ``(1 - alpha)^L``, and ``L`` is chosen
  so that it stays under :data:`FINAL_EPS_PX` for any box inside the frame (``alpha`` = 0.73 at the default
  smoothing 0.3: L is about 12 frames at 1080p). Frames near a run's real end (a gap, a cut, the last
  frame) are computed exactly as the batch tracker does, with the same floating-point operations.

So a frame is final at most ``sample_every + L`` frames (plus the edge padding of a short run) after it
is read, whatever the video's length. Without characters, the most prominent face is a whole-video
decision: every anonymous face's points are final in the same window, :meth:`StreamingTracker.leader`
says which face leads so far, and :meth:`StreamingTracker.build` gives the batch tracker's answer at the end.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lipsync.faces.backend import FaceBackend
from lipsync.faces.matching import CharacterRef, build_references
from lipsync.faces.pose import angle_gap, roll_degrees
from lipsync.faces.smoothing import edge_pad, ema_alpha, smooth_segment
from lipsync.faces.tracking import ANONYMOUS_ID, ROLL_JUMP_DEG, TrackingOptions, _lerp, _Obs, _Tracker
from lipsync.types import Box, Character, Track, TrackPoint

log = logging.getLogger(__name__)

#: How far (pixels) a point finalised early may be from the batch tracker's: far below a rounding step.
FINAL_EPS_PX = 1e-3

_COLS = 14  # a point as one row: box (4) then landmarks (5 x 2)


def lookahead_frames(strength: float, scale: float) -> int:
    """Frames of a growing run kept unfinished so that the truncated backward pass errs by at most
    FINAL_EPS_PX on values of magnitude up to ``scale`` (0 when smoothing is off)."""
    if strength <= 0.0:
        return 0
    decay = 1.0 - ema_alpha(strength)
    return max(1, math.ceil(math.log(FINAL_EPS_PX / max(1.0, 4.0 * scale)) / math.log(decay)))


class _Rows:
    """A growable (n, 14) float64 array."""

    def __init__(self) -> None:
        self.data = np.empty((64, _COLS), np.float64)
        self.n = 0

    def append(self, row: np.ndarray) -> None:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.n] = row
        self.n += 1

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


@dataclass
class _Run:
    """Consecutive raw frames of one identity within one shot, smoothed as the run grows."""

    frames: list[int] = field(default_factory=list)
    meta: list[tuple[float, bool]] = field(default_factory=list)  # (similarity, interpolated)
    rows: _Rows = field(default_factory=_Rows)
    fwd: _Rows | None = None  # the forward EMA over [head padding, rows], once the padding is fixed
    emitted: int = 0  # run positions before this one are final

    @property
    def last(self) -> int:
        return self.frames[-1]


class StreamingTracker:
    """The tracker, read as it goes. ``push`` frames in order, then ``finish``; each returns the last frame
    whose points are all final (-1: none yet). ``tracks`` hold the final points so far, one per identity
    (characters first, in order; anonymous faces as they appear)."""

    def __init__(
        self, backend: FaceBackend, refs: Sequence[CharacterRef], options: TrackingOptions | None = None
    ) -> None:
        self.options = options or TrackingOptions()
        self.core = _Tracker(backend, list(refs), self.options)
        self.strength = float(self.options.temporal_smoothing)
        self.alpha = ema_alpha(self.strength)
        self.tracks: list[Track] = [Track(i.id, i.name) for i in self.core.identities]
        self._runs: list[_Run | None] = [None] * len(self.tracks)
        self.lookahead = 0
        self.frontier = -1  # raw points are known for frames <= frontier
        self.final = -1
        self.frames_read = 0

    @property
    def anonymous(self) -> bool:
        return self.core.anonymous

    # --- driving ----------------------------------------------------------------------------------

    def push(self, index: int, frame: np.ndarray) -> int:
        if self.core.size is None:
            self.lookahead = lookahead_frames(self.strength, float(max(frame.shape[:2])))
        before = self.core.last_sample
        self.core.push(index, frame)
        self.frames_read = index + 1
        if self.core.last_sample != before and self.core.last_sample is not None:
            self._advance(self.core.last_sample, closing=False)
        return self.final

    def finish(self) -> int:
        self.core.finish()
        if self.frames_read:
            self._advance(self.frames_read - 1, closing=True)
        return self.final

    # --- reading ----------------------------------------------------------------------------------

    def leader(self) -> int | None:
        """Without characters: the identity that is the most prominent so far (None before any face)."""
        idents = self.core.identities
        if not idents:
            return None
        return max(range(len(idents)), key=lambda k: idents[k].area)

    def build(self) -> list[Track]:
        """The final tracks, as the batch tracker returns them (call after ``finish``)."""
        if not self.anonymous:
            return list(self.tracks)
        best = self.leader()
        if best is None or not self.tracks[best].points:
            return []
        return [Track(ANONYMOUS_ID, ANONYMOUS_ID, self.tracks[best].points)]

    # --- finalising -------------------------------------------------------------------------------

    def _advance(self, frontier: int, *, closing: bool) -> None:
        core = self.core
        lo = self.frontier
        while len(self.tracks) < len(core.identities):  # anonymous faces seen for the first time
            ident = core.identities[len(self.tracks)]
            self.tracks.append(Track(ident.id, ident.name))
            self._runs.append(None)
        own: dict[int, set[int]] = {}
        for k, f in core.new_probes:
            own.setdefault(k, set()).add(f)
        core.new_probes.clear()
        samples = core.samples[
            bisect.bisect_right(core.samples, lo) : bisect.bisect_right(core.samples, frontier)
        ]
        final = frontier
        for k, ident in enumerate(core.identities):
            probes = sorted(set(samples) | own.get(k, set()))
            raw = self._raw(ident.present, probes, lo)
            final = min(final, self._feed(k, raw, frontier, closing))
        self.frontier = frontier
        self.final = max(self.final, final)

    def _raw(self, present: dict[int, _Obs], probes: list[int], lo: int) -> list[tuple[int, _Obs, bool]]:
        """(frame, observation, interpolated) for the frames after ``lo`` up to the last probe, from the
        identity's probes there (and its state at ``lo``, the previous frontier)."""
        out: list[tuple[int, _Obs, bool]] = []
        prev = lo if lo >= 0 else None
        for q in probes:
            b = present.get(q)
            a = present.get(prev) if prev is not None else None
            if a is not None and b is not None and q - prev >= 2 and self.core._same_shot(prev, q):
                # Across a rotation jump (a phone turned) nothing is blended: each frame takes the nearer
                # observation, as the batch tracker does.
                jump = angle_gap(roll_degrees(a.landmarks), roll_degrees(b.landmarks)) > ROLL_JUMP_DEG
                for f in range(prev + 1, q):
                    t = (f - prev) / (q - prev)
                    out.append((f, (a if t < 0.5 else b) if jump else _lerp(a, b, t), True))
            if b is not None:
                out.append((q, b, False))
            prev = q
        return out

    def _feed(self, k: int, raw: list[tuple[int, _Obs, bool]], frontier: int, closing: bool) -> int:
        """Add identity ``k``'s new raw points to its runs; return the last frame final for it."""
        cuts = self.core.cuts
        for f, obs, interpolated in raw:
            run = self._runs[k]
            c = bisect.bisect_left(cuts, f)
            starts_shot = c < len(cuts) and cuts[c] == f
            if run is not None and (f != run.last + 1 or starts_shot or _rotates(run, obs)):
                self._close(k, run)
                run = None
            if run is None:
                run = self._runs[k] = _Run()
            run.frames.append(f)
            run.meta.append((obs.similarity, interpolated))
            run.rows.append(np.concatenate([obs.box.as_list(), obs.landmarks.reshape(-1)]).astype(np.float64))
        run = self._runs[k]
        if run is None:
            return frontier
        if closing or run.last < frontier:  # the frame after the run is known to be absent
            self._close(k, run)
            return frontier
        self._emit_early(k, run)
        return run.frames[run.emitted] - 1 if run.emitted < len(run.frames) else frontier

    def _smoothing(self, n: int) -> bool:
        return self.strength > 0.0 and n >= 3

    def _close(self, k: int, run: _Run) -> None:
        """The run ended: its remaining points, exactly as smooth_segment gives them."""
        self._runs[k] = None
        n = len(run.frames)
        x = run.rows.view
        if not self._smoothing(n):
            self._emit(k, run, x, 0)
            return
        pad = edge_pad(self.strength, n)
        if run.fwd is None:  # never finalised early: the whole run at once
            self._emit(k, run, smooth_segment(x, self.strength), 0)
            return
        # The forward pass so far covers [head, x]; continue it over the tail, then run backwards from
        # the very end, as zero_phase_ema does over the padded segment.
        fwd = run.fwd
        a = self.alpha
        while fwd.n < pad + n:  # rows added since the run last finalised points
            fwd.append(a * x[fwd.n - pad] + (1.0 - a) * fwd.view[fwd.n - 1])
        tail = 2.0 * x[-1] - x[-2 : -pad - 2 : -1]
        for row in tail:
            fwd.append(a * row + (1.0 - a) * fwd.view[fwd.n - 1])
        self._backward(k, run, fwd.view, fwd.n - 1, pad, n)

    def _emit_early(self, k: int, run: _Run) -> None:
        """A growing run: finalise the points at least ``lookahead`` frames before its current end."""
        n = len(run.frames)
        if not self._smoothing(n) and self.strength > 0.0:
            return  # too short to know whether it will be smoothed
        if self.strength <= 0.0:
            self._emit(k, run, run.rows.view, 0)
            return
        pad_max = edge_pad(self.strength, 10**9)
        if n - 1 < pad_max:
            return  # the edge padding still depends on the run's final length
        x = run.rows.view
        a = self.alpha
        if run.fwd is None:
            run.fwd = _Rows()
            head = 2.0 * x[0] - x[pad_max:0:-1]
            for row in head:
                run.fwd.append(row if run.fwd.n == 0 else a * row + (1.0 - a) * run.fwd.view[run.fwd.n - 1])
        fwd = run.fwd
        while fwd.n < pad_max + n:
            fwd.append(a * x[fwd.n - pad_max] + (1.0 - a) * fwd.view[fwd.n - 1])
        upto = n - 1 - self.lookahead
        if upto >= run.emitted:
            self._backward(k, run, fwd.view, pad_max + n - 1, pad_max, upto + 1)

    def _backward(self, k: int, run: _Run, fwd: np.ndarray, start: int, pad: int, stop: int) -> None:
        """Backward EMA from padded row ``start`` down to run position ``run.emitted``; emit positions
        up to ``stop`` (exclusive)."""
        a = self.alpha
        first = pad + run.emitted
        out = np.empty((start - first + 1, _COLS), np.float64)
        out[-1] = fwd[start]
        for t in range(start - 1, first - 1, -1):
            out[t - first] = a * fwd[t] + (1.0 - a) * out[t - first + 1]
        self._emit(k, run, out[: stop - run.emitted], run.emitted)

    def _emit(self, k: int, run: _Run, values: np.ndarray, offset: int) -> None:
        """Write final points for run positions ``run.emitted`` .. from ``values`` (row 0 = ``offset``)."""
        w, h = self.core.size or (0, 0)
        stop = offset + len(values)
        lms = values[run.emitted - offset : stop - offset, 4:].reshape(-1, 5, 2).astype(np.float32)
        points = self.tracks[k].points
        for j in range(run.emitted, stop):
            x1, y1, x2, y2 = (float(v) for v in values[j - offset, :4])
            box = Box(
                max(0.0, x1), max(0.0, y1), min(float(w), x2) if w else x2, min(float(h), y2) if h else y2
            )
            f = run.frames[j]
            similarity, interpolated = run.meta[j]
            points[f] = TrackPoint(f, box, lms[j - run.emitted], float(similarity), interpolated)
        run.emitted = stop


def _rotates(run: _Run, obs: _Obs) -> bool:
    """A roll jump from the run's last point to ``obs``: a run (and its smoothing) ends there."""
    last = run.rows.data[run.rows.n - 1, 4:].reshape(5, 2)
    return angle_gap(roll_degrees(last), roll_degrees(obs.landmarks)) > ROLL_JUMP_DEG


def track_characters(
    frames: Iterable[np.ndarray],
    backend: FaceBackend,
    characters: Sequence[Character] = (),
    options: TrackingOptions | None = None,
    num_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    references: Sequence[CharacterRef] | None = None,
) -> list[Track]:
    """Track ``characters`` (or the most prominent face when there are none) through ``frames``.

    ``frames`` is consumed once, in order (BGR uint8 arrays that the producer does not reuse).
    ``references`` may be given to skip recomputing the characters' reference embeddings.
    ``progress(done, total)`` is called after each frame; ``total`` is ``num_frames`` or 0 when unknown.
    Returns one Track per character, in the given order (boxes unpadded; see ``pad_track``).
    """
    refs = list(references) if references is not None else build_references(backend, characters)
    tracker = StreamingTracker(backend, refs, options)
    total = int(num_frames or 0)
    for index, frame in enumerate(frames):
        tracker.push(index, frame)
        if progress is not None:
            progress(index + 1, total)
    tracker.finish()
    core = tracker.core
    log.debug(
        "tracked %d frames with %d detections, %d cuts", tracker.frames_read, core.detections, len(core.cuts)
    )
    return tracker.build()
