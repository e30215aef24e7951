"""Tracking logic with a deterministic stub backend: coloured squares are faces, the colour is the identity."""

from __future__ import annotations

import json
import logging
import weakref
from pathlib import Path

import numpy as np
import pytest

from lipsync.errors import FaceError, ReferenceFaceNotFound
from lipsync.faces import (
    CharacterRef,
    ShotChangeDetector,
    TrackingOptions,
    match_faces,
    pad_track,
    reference_embedding,
    track_characters,
    tracks_from_json,
    tracks_to_json,
)
from lipsync.faces.align import ARCFACE_TEMPLATE
from lipsync.faces.backend import FaceBackend
from lipsync.faces.matching import build_references
from lipsync.faces.smoothing import contiguous_runs, smooth_segment, zero_phase_ema
from lipsync.types import Box, Character, Face, Track, TrackPoint

COLOURS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
NAMES = list(COLOURS)


class SquareBackend:
    """Detects pure-colour squares; the embedding is the one-hot colour."""

    name = "stub"
    default_threshold = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, frame: np.ndarray) -> list[Face]:
        self.calls += 1
        faces = []
        for colour in COLOURS.values():
            ys, xs = np.nonzero(np.all(frame == colour, axis=2))
            if len(xs) < 4:
                continue
            box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            lm = np.stack(
                [
                    box.x1 + ARCFACE_TEMPLATE[:, 0] / 112 * box.width,
                    box.y1 + ARCFACE_TEMPLATE[:, 1] / 112 * box.height,
                ],
                1,
            )
            faces.append(Face(box, lm.astype(np.float32), 1.0))
        return faces

    def embed(self, frame: np.ndarray, face: Face) -> np.ndarray:
        # The top-left pixel names the colour (tests draw overlaps so that it stays visible).
        pixel = tuple(int(v) for v in frame[int(face.box.y1), int(face.box.x1)])
        vec = np.zeros(len(COLOURS), np.float32)
        vec[list(COLOURS.values()).index(pixel)] = 1.0
        return vec

    def similarity(self, a, b) -> float:
        return float(np.clip(np.dot(a, b), 0, 1))


def ref(name: str) -> CharacterRef:
    vec = np.zeros(len(COLOURS), np.float32)
    vec[NAMES.index(name)] = 1.0
    return CharacterRef(name, name.title(), vec)


def frame_with(squares: dict[str, tuple[int, int, int]], size=(160, 120), bg=(40, 40, 40)) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    for name, (x, y, s) in squares.items():
        img[y : y + s, x : x + s] = COLOURS[name]
    return img


def gt_box(x, y, s) -> Box:
    return Box(x, y, x + s, y + s)


def test_protocol_is_satisfied_by_the_stub():
    assert isinstance(SquareBackend(), FaceBackend)


# --- assignment --------------------------------------------------------------------------------------


def test_hungarian_beats_greedy_and_never_doubles():
    sims = np.array([[0.9, 0.8], [0.85, 0.1]])
    got = {(a.face, a.character) for a in match_faces(sims, 0.5)}
    assert got == {(0, 1), (1, 0)}  # greedy would give face 0 to character 0 and leave character 1 empty
    # One face, two characters that both match it: only one takes it.
    one = match_faces(np.array([[0.7, 0.9]]), 0.5)
    assert [(a.face, a.character) for a in one] == [(0, 1)]
    # Below the threshold: nothing, even when it is the best there is.
    assert match_faces(np.array([[0.49, 0.3], [0.2, 0.1]]), 0.5) == []
    # Two faces, one character: the better face.
    assert [(a.face, a.character) for a in match_faces(np.array([[0.6], [0.8]]), 0.5)] == [(1, 0)]


def test_reference_embedding_errors_and_largest_face(caplog):
    backend = SquareBackend()
    char = Character("c1", "Carol", (Path("empty.png"),))
    with pytest.raises(ReferenceFaceNotFound, match=r"'c1' \(Carol\)") as info:
        reference_embedding(backend, char, images=[frame_with({})])
    assert info.value.field == "characters" and "empty.png" in info.value.message
    two = frame_with({"red": (10, 10, 20), "green": (60, 10, 40)})
    with caplog.at_level(logging.WARNING):
        r = reference_embedding(backend, char, images=[two])
    assert NAMES[int(np.argmax(r.embedding))] == "green"  # the larger square
    assert "using the largest" in caplog.text
    # Several images are averaged and renormalised.
    avg = reference_embedding(
        backend, char, images=[frame_with({"red": (0, 0, 9)}), frame_with({"green": (0, 0, 9)})]
    )
    np.testing.assert_allclose(avg.embedding, [np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-6)
    with pytest.raises(FaceError, match="unique"):
        build_references(backend, [char, char])


# --- tracking ----------------------------------------------------------------------------------------


def moving_path(n: int) -> list[tuple[int, int, int]]:
    return [(5 + 3 * i // 2, 30 + int(20 * np.sin(i / 9)), 30) for i in range(n)]


@pytest.mark.parametrize("every", [1, 4, 7])
def test_moving_face_with_gaps(every):
    n = 80
    path = moving_path(n)
    absent = set(range(23, 38)) | set(range(60, 66))
    frames = [frame_with({} if i in absent else {"red": path[i]}) for i in range(n)]
    opts = TrackingOptions(sample_every=every, temporal_smoothing=0.3)
    (track,) = track_characters(
        iter(frames), SquareBackend(), references=[ref("red")], options=opts, num_frames=n
    )
    for i in range(n):
        point = track.get(i)
        if i in absent:
            assert point is None, f"box at absent frame {i}"
        else:
            assert point is not None, f"no box at present frame {i}"
            assert point.box.iou(gt_box(*path[i])) >= 0.85, (i, point.box)
    assert not track.get(0).interpolated
    if every > 1:
        assert any(p.interpolated for p in track.points.values())


def test_samples_every_n_plus_last_frame():
    backend = SquareBackend()
    frames = [frame_with({"red": (50, 50, 20)}) for _ in range(50)]
    track_characters(frames, backend, references=[ref("red")], options=TrackingOptions(sample_every=5))
    assert backend.calls == 11  # frames 0, 5, ..., 45 and the last one (49)


def test_two_identities_crossing_keep_their_ids():
    n = 60
    frames, truth = [], {"red": [], "green": []}
    for i in range(n):
        a = (4 + 2 * i, 24, 22)  # left to right
        b = (124 - 2 * i, 50, 22)  # right to left, 4 px below: the two pass each other at frame 30
        truth["red"].append(a)
        truth["green"].append(b)
        frames.append(frame_with({"red": a, "green": b}))
    tracks = track_characters(
        frames,
        SquareBackend(),
        references=[ref("red"), ref("green")],
        options=TrackingOptions(sample_every=6),
    )
    assert [t.character_id for t in tracks] == ["red", "green"]
    for t in tracks:
        assert sorted(t.points) == list(range(n))
        for i, p in t.points.items():
            assert p.box.iou(gt_box(*truth[t.character_id][i])) >= 0.9, (t.character_id, i)


def test_shot_change_is_not_interpolated_across():
    frames = [frame_with({"red": (10, 10, 20)}) for _ in range(20)]
    frames += [frame_with({"red": (120, 80, 20)}, bg=(200, 180, 30)) for _ in range(20)]
    det = ShotChangeDetector(0.5)
    cuts = [i for i, f in enumerate(frames) if det.update(f)]
    assert cuts == [20]
    (track,) = track_characters(
        frames, SquareBackend(), references=[ref("red")], options=TrackingOptions(sample_every=7)
    )
    assert all(track.get(i).box.iou(gt_box(10, 10, 20)) > 0.95 for i in range(20))
    assert all(track.get(i).box.iou(gt_box(120, 80, 20)) > 0.95 for i in range(20, 40))
    assert not track.get(19).interpolated and not track.get(20).interpolated


def test_no_characters_tracks_the_most_prominent_face():
    n = 40
    frames = []
    for i in range(n):
        squares = {"green": (10, 10, 16)}  # small, always there
        if 5 <= i < 35:
            squares["red"] = (60 + i, 40, 40)  # big, most of the time
        if i < 3:
            squares["blue"] = (100, 70, 48)  # biggest, but only briefly
        frames.append(frame_with(squares))
    tracks = track_characters(frames, SquareBackend(), [], TrackingOptions(sample_every=4))
    assert len(tracks) == 1 and tracks[0].character_id == "face" and tracks[0].name == "face"
    assert sorted(tracks[0].points) == list(range(5, 35))
    assert all(p.box.iou(gt_box(60 + i, 40, 40)) > 0.9 for i, p in tracks[0].points.items())
    assert track_characters([frame_with({})] * 5, SquareBackend(), []) == []


def test_streaming_holds_a_bounded_number_of_frames():
    alive: list[weakref.ref] = []
    peak = 0

    def frames():
        nonlocal peak
        for i in range(120):
            f = frame_with({"red": (5 + i, 30, 20)} if i % 37 > 8 else {})
            alive.append(weakref.ref(f))
            yield f
            del f  # reference counting frees a frame as soon as the tracker lets go of it
            peak = max(peak, sum(r() is not None for r in alive))

    (track,) = track_characters(
        frames(), SquareBackend(), references=[ref("red")], options=TrackingOptions(sample_every=6)
    )
    assert peak <= 6 + 1, f"{peak} frames alive at once"
    assert len(track) > 50


def test_smoothing_damps_jitter_without_lag():
    rng = np.random.default_rng(1)
    n = 60
    truth = [(10 + 2 * i, 40, 30) for i in range(n)]
    jitter = rng.integers(-3, 4, size=(n, 2))
    frames = [
        frame_with({"red": (x + jx, y + jy, s)}, size=(200, 120))
        for (x, y, s), (jx, jy) in zip(truth, jitter, strict=True)
    ]

    def errors(strength):
        (t,) = track_characters(
            frames,
            SquareBackend(),
            references=[ref("red")],
            options=TrackingOptions(sample_every=1, temporal_smoothing=strength),
        )
        return np.array([t.get(i).box.center[0] - (truth[i][0] + 15) for i in range(n)])

    raw, smooth = errors(0.0), errors(0.8)
    assert np.abs(smooth).mean() < 0.7 * np.abs(raw).mean()
    assert abs(smooth[10:-10].mean()) < 0.5  # no lag behind the motion (a causal EMA would trail by pixels)


def test_smoothing_helpers():
    ramp = np.arange(30.0)[:, None] * [1.0, -2.0]
    np.testing.assert_allclose(smooth_segment(ramp, 0.5), ramp, atol=0.01)  # a straight line stays put
    causal_lag = zero_phase_ema(ramp, 0.0)
    np.testing.assert_allclose(causal_lag, ramp)
    assert contiguous_runs([1, 2, 3, 5, 6, 9], {6}) == [[1, 2, 3], [5], [6], [9]]
    with pytest.raises(ValueError):
        smooth_segment(ramp, 1.5)


def test_options_are_validated():
    for bad in (
        {"similarity_threshold": 1.5},
        {"temporal_smoothing": -0.1},
        {"sample_every": 0},
        {"pads": (1, 2)},
    ):
        with pytest.raises(ValueError):
            TrackingOptions(**bad)


# --- output ------------------------------------------------------------------------------------------


def test_json_schema_roundtrip_and_pads():
    t = Track("obama", "Barack Obama")
    lm = np.arange(10, dtype=np.float32).reshape(5, 2)
    t.points[3] = TrackPoint(3, Box(10.123, 20, 50, 70.456), lm, 0.87654, False)
    t.points[4] = TrackPoint(4, Box(12, 21, 52, 71), lm, 0.8, True)
    data = tracks_to_json([t], 30000 / 1001, 100)
    text = json.dumps(data)
    assert json.loads(text) == {
        "characters": [
            {
                "id": "obama",
                "name": "Barack Obama",
                "frames": [
                    {
                        "frame": 3,
                        "box": [10.12, 20.0, 50.0, 70.46],
                        "similarity": 0.8765,
                        "interpolated": False,
                    },
                    {"frame": 4, "box": [12.0, 21.0, 52.0, 71.0], "similarity": 0.8, "interpolated": True},
                ],
            }
        ],
        "fps": pytest.approx(29.97003),
        "num_frames": 100,
    }
    back = tracks_from_json(tracks_to_json([t], 25, 100, include_landmarks=True))
    assert back[0].get(4).interpolated and back[0].get(3).box.x1 == pytest.approx(10.12)
    np.testing.assert_allclose(back[0].get(3).landmarks, lm)
    padded = pad_track(t, (0, 20, 5, 5), 60, 80)
    assert padded.get(3).box.as_list() == [5.0, 20.0, 55.0, 80.0]  # bottom clipped to the frame
    assert t.get(3).box.y2 == pytest.approx(70.456)  # the original is untouched


def test_long_sample_interval_keeps_a_bounded_buffer():
    alive: list[weakref.ref] = []
    peak = 0

    def frames():
        nonlocal peak
        for i in range(200):
            f = frame_with({"red": (5 + i // 2, 30, 20)} if 50 <= i < 150 else {})
            alive.append(weakref.ref(f))
            yield f
            del f
            peak = max(peak, sum(r() is not None for r in alive))

    opts = TrackingOptions(sample_every=100, max_buffered_frames=10)
    (track,) = track_characters(frames(), SquareBackend(), references=[ref("red")], options=opts)
    assert peak <= 10 + 2
    present = sorted(track.points)
    # Boundaries found to within the buffer stride (10 frames), never outside the true presence.
    assert 50 <= present[0] <= 60 and 140 <= present[-1] <= 149
