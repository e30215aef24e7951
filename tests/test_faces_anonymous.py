"""Without characters: faces are followed by box continuity, and recognition runs only for a face that
continuity cannot place (after a cut, on re-appearing), with identities embedded lazily from a crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync.errors import ModelNotAvailable
from lipsync.faces import TrackingOptions, track_characters
from lipsync.faces.backend import LazyRecognizer, create_face_backend
from lipsync.faces.snapshot import FaceSnapshot
from lipsync.faces.tracking import track_characters_batch
from lipsync.types import Box, Face
from test_faces_tracking import SquareBackend, frame_with, gt_box


class CountingBackend(SquareBackend):
    """The stub, counting embeddings (and checking each is taken on a crop that still shows the face)."""

    def __init__(self) -> None:
        super().__init__()
        self.embeds = 0

    def embed(self, frame: np.ndarray, face: Face) -> np.ndarray:
        self.embeds += 1
        return super().embed(frame, face)


@pytest.mark.parametrize("tracker", [track_characters, track_characters_batch])
def test_a_steady_shot_runs_no_recognition(tracker):
    frames = [frame_with({"red": (20 + i, 30, 30)}) for i in range(60)]
    backend = CountingBackend()
    (track,) = tracker(frames, backend, [], TrackingOptions(sample_every=5))
    assert backend.embeds == 0 and backend.calls >= 12
    assert sorted(track.points) == list(range(60))
    assert all(p.box.iou(gt_box(20 + i, 30, 30)) > 0.95 for i, p in track.points.items())


def test_two_steady_faces_run_no_recognition_and_the_bigger_leads():
    frames = [frame_with({"red": (10 + i, 10, 20), "green": (90 - i, 60, 40)}) for i in range(30)]
    backend = CountingBackend()
    (track,) = track_characters(frames, backend, [], TrackingOptions(sample_every=4))
    assert backend.embeds == 0
    assert all(p.box.iou(gt_box(90 - i, 60, 40)) > 0.95 for i, p in track.points.items())


def test_after_a_cut_the_same_face_is_recognised_lazily():
    # Shot 1: red at the left; shot 2 (new background): red at the right, with a bigger green face for
    # a few frames only. Continuity cannot cross the cut, so red is embedded once on each side of it.
    frames = [frame_with({"red": (10, 10, 30)}) for _ in range(20)]
    frames += [
        frame_with({"red": (110, 70, 30), **({"green": (40, 40, 34)} if i < 4 else {})}, bg=(200, 180, 30))
        for i in range(20)
    ]
    backend = CountingBackend()
    (track,) = track_characters(frames, backend, [], TrackingOptions(sample_every=5))
    assert sorted(track.points) == list(range(40)), "red is one identity across the cut"
    assert all(track.get(i).box.iou(gt_box(10, 10, 30)) > 0.95 for i in range(20))
    assert all(track.get(i).box.iou(gt_box(110, 70, 30)) > 0.95 for i in range(20, 40))
    assert 0 < backend.embeds <= 6


def test_a_face_returning_elsewhere_in_the_shot_keeps_its_identity():
    frames = []
    for i in range(45):
        squares = {"green": (5, 80, 14)}  # small, always there: continuity keeps it without embeddings
        if i < 15:
            squares["red"] = (20, 10, 30)
        elif i >= 25:
            squares["red"] = (110, 10, 30)  # back, but far from where it left: recognition links it
        frames.append(frame_with(squares))
    backend = CountingBackend()
    (track,) = track_characters(frames, backend, [], TrackingOptions(sample_every=5))
    assert set(range(15)) | set(range(25, 45)) <= set(track.points)
    assert not set(range(16, 24)) & set(track.points)
    assert backend.embeds > 0


def test_snapshot_embeds_as_the_whole_frame_would():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    from lipsync.faces.align import ARCFACE_TEMPLATE, align_face

    box = Box(120.0, 60.0, 200.0, 160.0)
    lms = np.stack(
        [box.x1 + ARCFACE_TEMPLATE[:, 0] / 112 * 80, box.y1 + ARCFACE_TEMPLATE[:, 1] / 112 * 100], 1
    )
    face = Face(box, lms.astype(np.float32), 0.9)
    snap = FaceSnapshot.take(frame, face)
    assert snap.crop.shape[0] < frame.shape[0] and snap.crop.base is None  # a copy, smaller than the frame
    np.testing.assert_array_equal(align_face(snap.crop, snap.face.landmarks), align_face(frame, lms))
    # A face at the border: the crop is clipped to the frame, the geometry still matches.
    edge = Face(Box(0.0, 0.0, 60.0, 70.0), (lms - [120, 60]).astype(np.float32) * 0.7, 0.9)
    snap = FaceSnapshot.take(frame, edge)
    np.testing.assert_array_equal(
        align_face(snap.crop, snap.face.landmarks), align_face(frame, edge.landmarks)
    )


def test_recognizer_is_loaded_on_first_use_and_missing_files_are_reported_up_front(tmp_path: Path):
    from lipsync.config import Settings

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    det = Path(__file__).resolve().parents[2] / "shared" / "models" / "scrfd_2.5g_bnkps_320.onnx"
    if not det.exists():
        pytest.skip(f"the real SCRFD model is not at {det}")
    # A recognizer of the ArcFace interface: the mean of the input's pixels, as a 512-vector.
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 512])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3 * 112 * 112])
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [3 * 112 * 112, 512], np.full(3 * 112 * 112 * 512, 1e-4, np.float32)
    )
    b = helper.make_tensor("b", TensorProto.FLOAT, [512], np.arange(512, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input.1", "shape"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["out"])],
        "rec", [x], [y], [shape, w, b],
    )  # fmt: skip
    rec = tmp_path / "rec.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(rec))
    backend = create_face_backend(Settings(det_model=det, rec_model=rec, device="cpu"))
    assert isinstance(backend.recognizer, LazyRecognizer) and not backend.recognizer.loaded
    image = np.zeros((200, 200, 3), np.uint8)
    face = Face(
        Box(50, 50, 150, 150),
        np.array([[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]], np.float32),
        1,
    )
    vec = backend.embed(image, face)
    assert backend.recognizer.loaded and vec.shape == (512,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    with pytest.raises(ModelNotAvailable, match=r"missing\.onnx"):
        create_face_backend(Settings(det_model=det, rec_model=tmp_path / "missing.onnx", device="cpu"))
    assert LazyRecognizer(rec, "cpu").loaded is False


def test_one_face_or_one_character_is_assigned_without_scipy_as_scipy_would():
    import subprocess
    import sys

    from scipy.optimize import linear_sum_assignment

    from lipsync.faces.matching import assign

    rng = np.random.default_rng(5)
    for _ in range(200):
        shape = (1, int(rng.integers(1, 6))) if rng.random() < 0.5 else (int(rng.integers(1, 6)), 1)
        scores = rng.random(shape)
        eligible = rng.random(shape) < 0.6
        got = assign(scores, eligible)
        if not eligible.any():
            assert got == []
            continue
        rows, cols = linear_sum_assignment(np.where(eligible, -scores - 10.0, 1e6))
        want = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if eligible[r, c]]
        assert got == want
    code = (
        "import sys, numpy as np\n"
        "from lipsync.faces.matching import assign\n"
        "assert assign(np.array([[0.2, 0.9, 0.5]]), np.array([[True, True, False]])) == [(0, 1)]\n"
        "print('scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
