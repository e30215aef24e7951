"""The streaming tracker gives the batch tracker's tracks, with points final after a bounded look-ahead."""

from __future__ import annotations

import hashlib
import itertools
from typing import ClassVar

import numpy as np
import pytest

from conftest import shared_file
from lipsync.faces import StreamingTracker, TrackingOptions, build_references, track_characters
from lipsync.faces.streaming import lookahead_frames
from lipsync.faces.tracking import track_characters_batch
from lipsync.media import iter_frames
from lipsync.types import Box, Character
from pipeline_fixtures import (
    ColorFaceBackend,
    FaceSpec,
    background,
    draw_face,
    moving_box,
    write_reference_image,
    write_synthetic_video,
    write_video,
)

W, H = 256, 192


def assert_same_tracks(batch, streamed, tol_px=1.0):
    assert [(t.character_id, t.name) for t in batch] == [(t.character_id, t.name) for t in streamed]
    worst = 0.0
    for a, b in zip(batch, streamed, strict=True):
        assert set(a.points) == set(b.points), sorted(set(a.points) ^ set(b.points))  # same pass-throughs
        for f, p in a.points.items():
            q = b.points[f]
            assert p.interpolated == q.interpolated and p.similarity == pytest.approx(q.similarity, abs=1e-9)
            worst = max(worst, float(np.abs(np.subtract(p.box.as_list(), q.box.as_list())).max()))
            worst = max(worst, float(np.abs(p.landmarks - q.landmarks).max()))
    assert worst <= tol_px
    return worst


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("streaming")
    gap = range(20, 33)
    red = FaceSpec("red", lambda i: None if i in gap else Box(40 + 0.8 * i, 30, 104 + 0.8 * i, 114))
    blue = FaceSpec("blue", moving_box(150, 40, 60, 80, dx=-0.5, dy=0.1))
    frames_a = [background(W, H, seed=0) for _ in range(40)]
    frames_b = [background(W, H, seed=5)[:, ::-1].copy() for _ in range(40)]
    for i, img in enumerate(frames_a):
        draw_face(img, Box(30 + i, 40, 100 + i, 130), (40, 40, 220))
    for i, img in enumerate(frames_b):  # after the cut the red face jumps to the other side
        draw_face(img, Box(150 - i, 50, 210 - i, 130), (40, 40, 220))
    cut = write_video(d / "cut.mp4", frames_a + frames_b, 80, 25)
    return {
        "gap": write_synthetic_video(d / "gap.mp4", [red, blue], width=W, height=H, seconds=4.0),
        "cut": cut,
        "red": write_reference_image(d / "red.png", "red"),
        "blue": write_reference_image(d / "blue.png", "blue"),
    }


class _Replayed(ColorFaceBackend):
    """Detections computed once per picture and replayed (the test is about the tracker)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[bytes, list] = {}

    def detect(self, frame_bgr):
        key = hashlib.blake2b(frame_bgr.tobytes(), digest_size=16).digest()
        if key not in self.seen:
            self.seen[key] = super().detect(frame_bgr)
        return self.seen[key]


@pytest.fixture(scope="module")
def decoded(clips):
    return {name: list(iter_frames(clips[name])) for name in ("gap", "cut")}, _Replayed()


@pytest.mark.parametrize(("strength", "every"), [(0.0, 5), (0.3, 1), (0.3, 5), (0.8, 4), (1.0, 13), (1.0, 5)])
@pytest.mark.parametrize("clip", ["gap", "cut"])
def test_streaming_equals_batch_on_synthetic_clips(clips, decoded, strength, every, clip):
    frames_by_clip, backend = decoded
    frames = frames_by_clip[clip]
    chars = [Character("red", "Red", (clips["red"],)), Character("blue", "Blue", (clips["blue"],))]
    options = TrackingOptions(temporal_smoothing=strength, sample_every=every)
    for characters in (chars, []):
        batch = track_characters_batch(frames, backend, characters, options)
        streamed = track_characters(frames, backend, characters, options)
        assert_same_tracks(batch, streamed, tol_px=1e-3)


def test_points_are_final_within_the_bounded_look_ahead(clips):
    frames = list(iter_frames(clips["gap"]))
    options = TrackingOptions(sample_every=5, temporal_smoothing=0.3)
    backend = ColorFaceBackend()
    refs = build_references(backend, [Character("red", "Red", (clips["red"],))])
    tracker = StreamingTracker(backend, refs, options)
    lag = 0
    snapshots = {}
    for i, frame in enumerate(frames):
        final = tracker.push(i, frame)
        lag = max(lag, i - final)
        # What is final now never changes later.
        snapshots.update({f: p.box for f, p in tracker.tracks[0].points.items() if f <= final})
    tracker.finish()
    assert tracker.lookahead == lookahead_frames(0.3, float(W)) and tracker.lookahead <= 12
    assert lag <= options.sample_every + tracker.lookahead + 2
    assert all(tracker.tracks[0].points[f].box == box for f, box in snapshots.items())
    assert tracker.final == len(frames) - 1


@pytest.mark.shared_media
@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["talking_chaplin_850x480_30fps.mp4", "talking_vfr_700x700_avg22fps.mp4"]
)
def test_streaming_equals_batch_on_real_clips_with_dlib(name):
    pytest.importorskip("dlib", reason="the dlib face backend (lipsync[offline]) is not installed")
    from lipsync.faces import DlibBackend

    video = shared_file(name)
    frames = list(itertools.islice(iter_frames(video), 120))

    class Recorded(DlibBackend):
        """Detections computed once per frame and replayed, so both trackers see the same faces."""

        seen: ClassVar[dict] = {}

        def detect(self, frame_bgr):
            key = hashlib.blake2b(frame_bgr.tobytes(), digest_size=16).digest()
            if key not in self.seen:
                self.seen[key] = super().detect(frame_bgr)
            return self.seen[key]

    backend = Recorded()
    options = TrackingOptions()
    batch = track_characters_batch(frames, backend, [], options)
    streamed = track_characters(frames, backend, [], options)
    assert batch and len(batch[0]) > 100
    assert_same_tracks(batch, streamed, tol_px=1e-3)
