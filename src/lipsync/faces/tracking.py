"""Streaming face tracking: sampled detection, identity assignment, refinement, interpolation, smoothing.

How a video is processed (one pass over ``frames``, which may be a generator of any length):

1. A cheap shot-change detector looks at every frame (colour histogram of a small thumbnail).
2. Faces are detected (:mod:`lipsync.faces.angles`: tilted faces re-detected upright, quarter turns
   tried with ``detect_angles=fallback``), embedded and assigned to characters every ``sample_every``
   frames, on the last frame of a shot and the first of the next (nothing is interpolated across a cut),
   and on the last frame of the video.
3. Assignment in a sampled frame is optimal (Hungarian): a pair is eligible when its similarity is at
   least ``similarity_threshold``; IoU with the character's box at the previous sample of the same shot
   adds a small bonus (tie-break between similar candidates) and, when it is at least
   ``continuity_iou``, keeps a pair eligible down to ``similarity_threshold - continuity_margin`` (a
   head turning away lowers its similarity for a moment). No character takes two faces and no face
   goes to two characters.
4. When a character is present at one sample and absent at the next, the frames in between (held in a
   buffer of at most ``sample_every - 1`` frames, the only frames ever kept) are probed by binary search
   to find where it appears or disappears, so absent frames get no box and present frames get one.
   (An absence shorter than ``sample_every`` between two samples is not seen: lower ``sample_every``.)
5. Between two samples in one shot, box, landmarks and similarity are interpolated linearly
   (``interpolated=True``); across a rotation jump (roll changing by over ``ROLL_JUMP_DEG``) each frame
   takes the nearer sample instead: a blend of two orientations is neither face.
6. Each track is smoothed by a zero-phase forward-backward EMA (``temporal_smoothing``) per run of
   consecutive frames within one shot and one orientation, so it damps jitter without lagging.

With no characters, every face gets an anonymous identity and the most prominent one (largest summed box
area over its frames: big and present often) is returned with id and name "face". A face is followed by
box continuity (IoU at least ``continuity_iou`` with its box at the previous sample of the shot); only a
face that continuity cannot place (after a cut, on appearing) is embedded and compared with the faces not
seen at this sample, and an identity's own embedding is taken, from a crop kept for it, only when
something is compared with it (:mod:`lipsync.faces.snapshot`). A steady shot runs no recognition at all.

Memory: the buffer (at most ``sample_every - 1`` frames), the observations at sampled frames, and the
output itself (about 0.5 KB per tracked frame per character, ~1 MB per character per minute at 30 fps);
frames are never accumulated. With no characters, each anonymous face keeps only its own observations.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lipsync.faces.angles import AngleDetector
from lipsync.faces.backend import FaceBackend, embed_faces, similarity_matrix
from lipsync.faces.matching import CharacterRef, build_references, match_faces
from lipsync.faces.pose import angle_gap, roll_degrees
from lipsync.faces.shots import ShotChangeDetector
from lipsync.faces.smoothing import contiguous_runs, smooth_segment
from lipsync.faces.snapshot import FaceSnapshot
from lipsync.faces.tracking_options import TrackingOptions
from lipsync.types import Box, Character, Face, Pads, Track, TrackPoint

__all__ = ["ANONYMOUS_ID", "TrackingOptions", "pad_track", "track_characters_batch"]

log = logging.getLogger(__name__)

#: A roll change over this between observations is a rotation jump: no interpolation or smoothing across.
ROLL_JUMP_DEG = 30.0

ANONYMOUS_ID = "face"


# --- tracking ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Obs:
    box: Box
    landmarks: np.ndarray
    similarity: float

    @classmethod
    def of(cls, face: Face, similarity: float) -> _Obs:
        return cls(face.box, np.asarray(face.landmarks, np.float32), similarity)


@dataclass
class _Identity:
    """A character (or, without characters, one anonymous face). Storage is sparse: ``present`` holds
    observations; absence at a regular sample is implied by the tracker's sample list, and ``absent``
    only records refinement probes that found nothing."""

    id: str
    name: str
    embedding: np.ndarray | None  # None until first needed (anonymous faces: see ``snapshot``)
    anonymous: bool = False
    snapshot: FaceSnapshot | None = None  # what the deferred embedding is taken from
    count: int = 1
    area: float = 0.0  # summed box area at regular samples: prominence without characters
    present: dict[int, _Obs] = field(default_factory=dict)
    absent: set[int] = field(default_factory=set)


@dataclass
class _Analysis:
    matched: dict[int, tuple[_Obs, np.ndarray | None]]  # identity index -> observation, embedding
    unmatched: list[tuple[Face, np.ndarray | None]]  # None: not embedded (nothing to compare it with)


class _Tracker:
    def __init__(self, backend: FaceBackend, refs: Sequence[CharacterRef], options: TrackingOptions) -> None:
        self.backend = backend
        self.detector = AngleDetector(backend, fallback=options.detect_angles == "fallback")
        self.options = options
        self.every = int(options.sample_every)
        self.buffer_stride = max(1, -(-(self.every - 1) // int(options.max_buffered_frames)))
        self.anonymous = not refs
        self.identities = [_Identity(r.id, r.name, r.embedding) for r in refs]
        self.shots = ShotChangeDetector(options.shot_change_threshold)
        self.cuts: list[int] = []  # first frames of shots after the first, ascending
        self.samples: list[int] = []  # regular sample frames, ascending
        self.buffer: list[tuple[int, np.ndarray]] = []
        self.last_sample: int | None = None
        self.last_frame: tuple[int, np.ndarray] | None = None
        self.size: tuple[int, int] | None = None  # (width, height)
        self.detections = 0
        # (identity, frame) of every probe (present or absent) since the streaming reader last drained
        # them: how lipsync.faces.streaming learns what changed without rescanning the identities.
        self.new_probes: list[tuple[int, int]] = []

    # --- driving ----------------------------------------------------------------------------------

    def push(self, index: int, frame: np.ndarray) -> None:
        if self.size is None:
            self.size = (int(frame.shape[1]), int(frame.shape[0]))
        cut = self.shots.update(frame)
        if cut:
            self.cuts.append(index)
            last = self.last_frame
            if last is not None and last[0] == index - 1 and self.last_sample != index - 1:
                self._sample(*last)  # the previous shot's last frame, so its tracks end exactly there
            self._sample(index, frame)
        elif self.last_sample is None or index - self.last_sample >= self.every:
            self._sample(index, frame)
        elif (index - self.last_sample) % self.buffer_stride == 0:
            self.buffer.append((index, frame))
        self.last_frame = (index, frame)

    def finish(self) -> None:
        if self.last_frame is not None and self.last_sample != self.last_frame[0]:
            self._sample(*self.last_frame)
        self.buffer.clear()
        self.last_frame = None

    def _same_shot(self, a: int, b: int) -> bool:
        """No cut in (a, b]."""
        k = bisect.bisect_right(self.cuts, a)
        return k >= len(self.cuts) or self.cuts[k] > b

    # --- analysis ---------------------------------------------------------------------------------

    def _analyse(self, index: int, frame: np.ndarray) -> _Analysis:
        self.detections += 1
        faces = self.detector.detect(frame)
        if not faces:
            return _Analysis({}, [])
        if self.anonymous:
            return self._analyse_anonymous(index, frame, faces)
        embs = embed_faces(self.backend, frame, faces)
        sims = similarity_matrix(self.backend, embs, [ident.embedding for ident in self.identities])
        ious = np.zeros_like(sims)
        prev = self.last_sample
        if prev is not None and prev < index and self._same_shot(prev, index):
            for k, ident in enumerate(self.identities):
                obs = ident.present.get(prev)
                if obs is not None:
                    for f, face in enumerate(faces):
                        ious[f, k] = face.box.iou(obs.box)
        opts = self.options
        relaxed = (ious >= opts.continuity_iou) & (sims >= opts.similarity_threshold - opts.continuity_margin)
        matches = match_faces(sims, opts.similarity_threshold, bonus=opts.iou_bonus * ious, relaxed=relaxed)
        matched = {}
        used = set()
        for m in matches:
            face = faces[m.face]
            matched[m.character] = (
                _Obs.of(face, m.similarity),
                embs[m.face],
            )
            used.add(m.face)
        unmatched = [(faces[f], embs[f]) for f in range(len(faces)) if f not in used]
        return _Analysis(matched, unmatched)

    def _analyse_anonymous(self, index: int, frame: np.ndarray, faces: list[Face]) -> _Analysis:
        """Continuity first (IoU with the previous sample of the shot), recognition only for the rest."""
        matched: dict[int, tuple[_Obs, np.ndarray | None]] = {}
        rest = list(range(len(faces)))
        prev = self.last_sample
        if prev is not None and prev < index and self._same_shot(prev, index):
            seen = [k for k, ident in enumerate(self.identities) if prev in ident.present]
            ious = np.array(
                [[face.box.iou(self.identities[k].present[prev].box) for k in seen] for face in faces]
            )
            for m in match_faces(ious.reshape(len(faces), len(seen)), self.options.continuity_iou):
                face = faces[m.face]
                matched[seen[m.character]] = (
                    _Obs.of(face, 1.0),
                    None,
                )
                rest.remove(m.face)
        others = [k for k in range(len(self.identities)) if k not in matched]
        if not rest or not others:
            return _Analysis(matched, [(faces[f], None) for f in rest])
        embs = embed_faces(self.backend, frame, [faces[f] for f in rest])
        sims = similarity_matrix(self.backend, embs, [self._embedding(self.identities[k]) for k in others])
        placed = set()
        for m in match_faces(sims, self.options.similarity_threshold):
            face = faces[rest[m.face]]
            matched[others[m.character]] = (_Obs.of(face, m.similarity),
                                            embs[m.face])  # fmt: skip
            placed.add(m.face)
        return _Analysis(matched, [(faces[f], embs[j]) for j, f in enumerate(rest) if j not in placed])

    def _embedding(self, ident: _Identity) -> np.ndarray:
        if ident.embedding is None:
            assert ident.snapshot is not None
            ident.embedding = ident.snapshot.embed(self.backend)
            ident.snapshot = None
        return ident.embedding

    def _sample(self, index: int, frame: np.ndarray) -> None:
        analysis = self._analyse(index, frame)
        if self.anonymous:
            for face, emb in analysis.unmatched:
                snapshot = FaceSnapshot.take(frame, face) if emb is None else None
                name = f"{ANONYMOUS_ID}{len(self.identities)}"
                self.identities.append(_Identity(name, ANONYMOUS_ID, emb, anonymous=True, snapshot=snapshot))
                analysis.matched[len(self.identities) - 1] = (
                    _Obs.of(face, 1.0),
                    emb,
                )
        prev = self.last_sample
        self.samples.append(index)
        for k, (obs, emb) in analysis.matched.items():
            ident = self.identities[k]
            ident.present[index] = obs
            self.new_probes.append((k, index))
            ident.area += obs.box.area
            if ident.anonymous and emb is not None:
                # Running mean of the anonymous identity's embeddings, so it follows slow appearance changes.
                ident.count += 1
                mean = self._embedding(ident) * (ident.count - 1) + emb
                ident.embedding = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        if (
            self.options.refine_transitions
            and prev is not None
            and prev < index - 1
            and self._same_shot(prev, index)
        ):
            self._refine(prev, index)
        self.buffer.clear()
        self.last_sample = index

    def _refine(self, lo: int, hi: int) -> None:
        """Binary-search the buffered frames for each identity whose presence flips between samples."""
        between = [(i, f) for i, f in self.buffer if lo < i < hi]
        if not between:
            return
        cache: dict[int, _Analysis] = {}
        for k, ident in enumerate(self.identities):
            at_lo = lo in ident.present
            if at_lo == (hi in ident.present):
                continue
            a, b = -1, len(between)  # positions; -1 stands for lo, len for hi
            while b - a > 1:
                m = (a + b) // 2
                idx, frame = between[m]
                if idx not in cache:
                    cache[idx] = self._analyse(idx, frame)
                hit = cache[idx].matched.get(k)
                if hit is not None:
                    ident.present[idx] = hit[0]
                else:
                    ident.absent.add(idx)
                self.new_probes.append((k, idx))
                if (hit is not None) == at_lo:
                    a = m
                else:
                    b = m

    # --- output -----------------------------------------------------------------------------------

    def build(self) -> list[Track]:
        if self.anonymous:
            if not self.identities:
                return []
            best = max(self.identities, key=lambda ident: ident.area)
            track = self._track(best)
            track.character_id = track.name = ANONYMOUS_ID
            return [track] if track.points else []
        return [self._track(ident) for ident in self.identities]

    def _next_probe(self, ident: _Identity, own: list[int], k: int) -> int | None:
        """The first frame after own[k] where ``ident`` was looked for: its next own probe or the next
        regular sample, whichever comes first."""
        p = own[k]
        candidates = []
        if k + 1 < len(own):
            candidates.append(own[k + 1])
        j = bisect.bisect_right(self.samples, p)
        if j < len(self.samples):
            candidates.append(self.samples[j])
        return min(candidates) if candidates else None

    def _track(self, ident: _Identity) -> Track:
        track = Track(ident.id, ident.name)
        own = sorted(set(ident.present) | ident.absent)
        raw: dict[int, _Obs] = {}
        interpolated: set[int] = set()
        for k, p in enumerate(own):
            a = ident.present.get(p)
            if a is None:
                continue
            raw[p] = a
            q = self._next_probe(ident, own, k)
            b = ident.present.get(q) if q is not None else None
            if b is None or q - p < 2 or not self._same_shot(p, q):
                continue
            jump = angle_gap(roll_degrees(a.landmarks), roll_degrees(b.landmarks)) > ROLL_JUMP_DEG
            for f in range(p + 1, q):
                t = (f - p) / (q - p)
                raw[f] = (a if t < 0.5 else b) if jump else _lerp(a, b, t)
                interpolated.add(f)
        frames = sorted(raw)
        rolls = {f: roll_degrees(raw[f].landmarks) for f in frames}
        jumps = {f for f in frames if f - 1 in raw and angle_gap(rolls[f - 1], rolls[f]) > ROLL_JUMP_DEG}
        strength = self.options.temporal_smoothing
        w, h = self.size or (0, 0)
        for run in contiguous_runs(frames, frozenset(self.cuts) | jumps):
            boxes = np.array([raw[f].box.as_list() for f in run], dtype=np.float64)
            lms = np.array([raw[f].landmarks.reshape(-1) for f in run], dtype=np.float64)
            if strength > 0 and len(run) >= 3:
                boxes = smooth_segment(boxes, strength)
                lms = smooth_segment(lms, strength)
            # One landmark block per run, one view per point: a tracked frame costs ~0.5 KB, not ~1 KB.
            lms32 = lms.reshape(len(run), 5, 2).astype(np.float32)
            for j, f in enumerate(run):
                x1, y1, x2, y2 = (float(v) for v in boxes[j])
                box = Box(
                    max(0.0, x1), max(0.0, y1), min(float(w), x2) if w else x2, min(float(h), y2) if h else y2
                )
                track.points[f] = TrackPoint(
                    frame=f,
                    box=box,
                    landmarks=lms32[j],
                    similarity=float(raw[f].similarity),
                    interpolated=f in interpolated,
                )
        return track


def _lerp(a: _Obs, b: _Obs, t: float) -> _Obs:
    return _Obs(
        a.box.lerp(b.box, t),
        (a.landmarks + (b.landmarks - a.landmarks) * t).astype(np.float32),
        a.similarity + (b.similarity - a.similarity) * t,
    )


def track_characters_batch(
    frames: Iterable[np.ndarray],
    backend: FaceBackend,
    characters: Sequence[Character] = (),
    options: TrackingOptions | None = None,
    *,
    references: Sequence[CharacterRef] | None = None,
) -> list[Track]:
    """The reference tracker: every decision taken at the end of ``frames``. Production code uses the
    streaming tracker (lipsync.faces.streaming.track_characters), which gives the same tracks; this one
    stays as the oracle its tests compare against."""
    options = options or TrackingOptions()
    refs = list(references) if references is not None else build_references(backend, characters)
    tracker = _Tracker(backend, refs, options)
    for index, frame in enumerate(frames):
        tracker.push(index, frame)
    tracker.finish()
    return tracker.build()


def pad_track(track: Track, pads: Pads, width: int, height: int) -> Track:
    """A copy of ``track`` with every box grown by ``pads`` (top, bottom, left, right) and clipped to the
    frame, as integer pixels: what the pipeline crops for Wav2Lip."""
    out = Track(track.character_id, track.name)
    for f, p in track.points.items():
        out.points[f] = TrackPoint(
            f, p.box.padded(pads, width, height), p.landmarks, p.similarity, p.interpolated
        )
    return out
