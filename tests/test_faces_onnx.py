"""SCRFD / ArcFace pre- and post-processing against tiny ONNX graphs whose outputs are known."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from lipsync.errors import ModelError  # noqa: E402
from lipsync.faces.align import (  # noqa: E402
    ARCFACE_TEMPLATE,
    align_face,
    letterbox,
    nms,
    similarity_transform,
)
from lipsync.faces.arcface import ArcFaceRecognizer  # noqa: E402
from lipsync.faces.backend import InsightFaceBackend  # noqa: E402
from lipsync.faces.scrfd import SCRFDDetector  # noqa: E402
from lipsync.types import Box, Face  # noqa: E402


def _session(model) -> ort.InferenceSession:
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _constant_outputs_model(outputs: list[tuple[str, np.ndarray]], input_shape) -> onnx.ModelProto:
    """A graph with one image input whose outputs are fixed tensors (plus 0 * mean(input), so the input
    is really consumed and must have the right shape)."""
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    outs = []
    for k, (name, value) in enumerate(outputs):
        inits.append(
            helper.make_tensor(f"c{k}", TensorProto.FLOAT, value.shape, value.astype(np.float32).ravel())
        )
        nodes.append(helper.make_node("Add", [f"c{k}", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        "scrfd_stub",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, input_shape)],
        outs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


SIZE = 64  # model input; strides 8/16/32 -> 8x8, 4x4, 2x2 cells, 2 anchors each


def _scrfd_tensors():
    """Scores/boxes/keypoints for a 64x64 input with one strong face at stride 8 (cell row 1, col 2,
    anchor 0), a weaker duplicate of it in the second anchor (removed by NMS), a face at stride 16 and a
    below-threshold candidate at stride 32."""
    levels = {}
    for stride in (8, 16, 32):
        n = (SIZE // stride) ** 2 * 2
        levels[stride] = [np.zeros((n, 1)), np.zeros((n, 4)), np.zeros((n, 10))]
    s8, b8, k8 = levels[8]
    i = (1 * 8 + 2) * 2  # centre (16, 8)
    s8[i] = 0.9
    b8[i] = [1.0, 0.5, 1.0, 1.5]  # -> (8, 4, 24, 20)
    k8[i] = [-0.5, 0, 0.5, 0, 0, 0.5, -0.4, 1, 0.4, 1]  # -> (12,8) (20,8) (16,12) (12.8,16) (19.2,16)
    s8[i + 1] = 0.8
    b8[i + 1] = [1.0, 0.5, 1.0, 1.25]  # IoU with the first > 0.4 -> suppressed
    s16, b16, k16 = levels[16]
    j = (2 * 4 + 3) * 2 + 1  # centre (48, 32), second anchor
    s16[j] = 0.7
    b16[j] = [0.5, 0.5, 0.5, 0.5]  # -> (40, 24, 56, 40)
    k16[j] = [0.0] * 10
    s32, b32, _ = levels[32]
    s32[0] = 0.49  # below the 0.5 threshold
    b32[0] = [0.1, 0.1, 0.1, 0.1]
    return levels


def _scrfd_model(*, batched: bool, fixed: bool, shuffle: bool = False) -> onnx.ModelProto:
    levels = _scrfd_tensors()
    outs = []
    for kind, idx in (("score", 0), ("bbox", 1), ("kps", 2)):
        for stride in (8, 16, 32):
            value = levels[stride][idx]
            outs.append(
                (f"{kind}_{stride}" if batched else str(400 + len(outs)), value[None] if batched else value)
            )
    if shuffle:
        outs = outs[::-1]
    shape = [1, 3, SIZE, SIZE] if fixed else ["batch", 3, "height", "width"]
    return _constant_outputs_model(outs, shape)


EXPECTED_BOX_LB = np.array([8, 4, 24, 20], dtype=np.float32)
EXPECTED_KPS_LB = np.array([[12, 8], [20, 8], [16, 12], [12.8, 16], [19.2, 16]], dtype=np.float32)


@pytest.mark.parametrize(
    ("batched", "fixed", "shuffle"),
    [(False, True, False), (True, True, False), (True, False, True), (False, False, True)],
)
def test_scrfd_decodes_known_outputs_and_scales_back(batched, fixed, shuffle):
    session = _session(_scrfd_model(batched=batched, fixed=fixed, shuffle=shuffle))
    det = SCRFDDetector(session, input_size=SIZE)
    assert (det.input_width, det.input_height) == (SIZE, SIZE)
    # A 200x100 frame letterboxes to 64x32 (scale 0.32), padded at the bottom.
    frame = np.full((100, 200, 3), 90, np.uint8)
    faces = det.detect(frame)
    assert len(faces) == 2, (
        "NMS keeps the strong face and the stride-16 face, drops the duplicate and the weak one"
    )
    first, second = faces
    assert first.score == pytest.approx(0.9)
    np.testing.assert_allclose(first.box.as_list(), EXPECTED_BOX_LB / 0.32, atol=1e-3)
    np.testing.assert_allclose(first.landmarks, EXPECTED_KPS_LB / 0.32, atol=1e-3)
    # (40, 24, 56, 40) scaled back, then clipped to the 100-pixel height.
    np.testing.assert_allclose(second.box.as_list(), [125, 75, 175, 100], atol=1e-3)
    np.testing.assert_allclose(second.landmarks, np.tile([[150, 100]], (5, 1)), atol=1e-3)


def test_scrfd_fixed_input_size_is_read_from_the_session():
    det = SCRFDDetector(_session(_scrfd_model(batched=False, fixed=True)))  # default 640 ignored
    assert (det.input_width, det.input_height) == (SIZE, SIZE)
    # A tall frame: 50x160 -> scale 0.4 -> 20x64 content, padded on the right.
    faces = SCRFDDetector(_session(_scrfd_model(batched=False, fixed=True))).detect(
        np.zeros((160, 50, 3), np.uint8)
    )
    np.testing.assert_allclose(faces[0].box.as_list(), [20, 10, 50, 50], atol=1e-3)  # x clipped to 50


def test_scrfd_dynamic_input_defaults_to_640():
    det = SCRFDDetector(_session(_scrfd_model(batched=True, fixed=False)))
    assert (det.input_width, det.input_height) == (640, 640)
    # The stub's outputs are sized for 64x64, so at 640 the anchor count does not match: a clear error.
    with pytest.raises(ModelError, match="anchors"):
        det.detect(np.zeros((100, 100, 3), np.uint8))


def test_scrfd_preprocess_is_rgb_normalised_letterbox():
    det = SCRFDDetector(_session(_scrfd_model(batched=False, fixed=True)))
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 128, 250  # B, G, R
    blob, lb = det.preprocess(frame)
    assert blob.shape == (1, 3, SIZE, SIZE) and blob.dtype == np.float32
    assert lb.scale_x == pytest.approx(1.0) and lb.content_height == 32
    np.testing.assert_allclose(
        blob[0, :, 0, 0], [(250 - 127.5) / 128, (128 - 127.5) / 128, (10 - 127.5) / 128]
    )
    np.testing.assert_allclose(blob[0, :, 40, 0], [-127.5 / 128] * 3)  # bottom padding is black


def test_scrfd_rejects_unknown_layout():
    bad = _constant_outputs_model([("x", np.zeros((10, 3)))], [1, 3, SIZE, SIZE])
    with pytest.raises(ModelError, match="last dimension"):
        SCRFDDetector(_session(bad))


def test_letterbox_keeps_aspect_and_pads_bottom_right():
    img = np.full((100, 300, 3), 200, np.uint8)
    lb = letterbox(img, 640, 640)
    assert (lb.content_width, lb.content_height) == (640, 213)
    assert lb.image[212, 639].tolist() == [200, 200, 200] and lb.image[214, 0].tolist() == [0, 0, 0]
    np.testing.assert_allclose(lb.to_original(np.array([[640.0, 213.0]])), [[300, 100]], atol=1e-4)


def test_nms_suppresses_overlaps_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.95, 0.5], np.float32), 0.4) == [1, 2]


# --- alignment ---------------------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, t = np.deg2rad(17.0), 2.5, np.array([31.0, -7.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE.astype(np.float64)
    dst = src @ (scale * rot).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-4)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-3)
    # Noisy points: still the least-squares answer, never a reflection.
    noisy = dst + np.random.default_rng(0).normal(0, 0.5, dst.shape)
    m2 = similarity_transform(src, noisy)
    assert np.linalg.det(m2[:, :2]) > 0
    np.testing.assert_allclose(m2[:, :2], scale * rot, atol=0.05)


def test_align_face_puts_landmarks_on_the_template():
    # Dots drawn where a rotated, scaled face's landmarks are must land on the template after alignment.
    angle, scale = np.deg2rad(-12.0), 1.8
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lms = (ARCFACE_TEMPLATE @ (scale * rot).T + [60.0, 90.0]).astype(np.float32)
    img = np.zeros((360, 360, 3), np.uint8)
    for k, (x, y) in enumerate(lms):
        img[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3] = 50 * (k + 1)
    crop = align_face(img, lms)
    assert crop.shape == (112, 112, 3)
    for k, (x, y) in enumerate(ARCFACE_TEMPLATE):
        patch = crop[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2, 0]
        assert abs(int(patch.max()) - 50 * (k + 1)) <= 12, f"landmark {k} not on the template"


# --- ArcFace -----------------------------------------------------------------------------------------


def _mean_model(batch) -> onnx.ModelProto:
    """(N, 3, 112, 112) -> (N, 3): the per-channel mean, i.e. the normalised colour of the crop."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["data"], ["fc1"], axes=[2, 3], keepdims=0)],
        "arcface_stub",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("batch", [1, "N"])
def test_arcface_normalisation_rgb_order_and_l2(batch):
    rec = ArcFaceRecognizer(_session(_mean_model(batch)))
    assert rec.input_size == 112
    img = np.zeros((200, 200, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 191  # B, G, R
    face = Face(
        Box(0, 0, 112, 112), ARCFACE_TEMPLATE.copy(), 1.0
    )  # identity alignment: crop = img[:112, :112]
    expected = np.array([(191 - 127.5) / 127.5, (0 - 127.5) / 127.5, (255 - 127.5) / 127.5])
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(rec.embed(img, face), expected, atol=1e-5)
    many = rec.embed_many(img, [face, face])
    assert len(many) == 2
    np.testing.assert_allclose(many[1], expected, atol=1e-5)
    backend = InsightFaceBackend(SCRFDDetector(_session(_scrfd_model(batched=False, fixed=True))), rec)
    assert backend.similarity(expected, expected) == pytest.approx(1.0)
    assert backend.similarity(expected, -expected) == 0.0  # cosine clipped to [0, 1]


def test_arcface_alignment_follows_landmarks():
    # Left half blue, right half red; the template eyes sit left/right of centre, so a face whose
    # landmarks are mirrored (rotated 180 degrees) must come out with the colours swapped.
    rec = ArcFaceRecognizer(_session(_mean_model(1)))
    img = np.zeros((224, 224, 3), np.uint8)
    img[:, :112] = (255, 0, 0)
    img[:, 112:] = (0, 0, 255)
    upright = ARCFACE_TEMPLATE * 2.0
    rotated = np.array([224, 224]) - upright
    blob_a = rec.preprocess(img, upright)
    blob_b = rec.preprocess(img, rotated)
    # RGB channel 2 (blue) dominates the left of the upright crop and the right of the rotated one.
    assert blob_a[0, 2, :, :40].mean() > 0.9 and blob_b[0, 2, :, :40].mean() < -0.9


# --- backend factory ---------------------------------------------------------------------------------


def _write_models(tmp_path):
    det, rec = tmp_path / "det.onnx", tmp_path / "rec.onnx"
    det.write_bytes(_scrfd_model(batched=False, fixed=True).SerializeToString())
    rec.write_bytes(_mean_model("N").SerializeToString())
    return det, rec


def test_create_face_backend_uses_model_overrides(tmp_path):
    from lipsync.config import Settings
    from lipsync.faces import create_face_backend

    det, rec = _write_models(tmp_path)
    backend = create_face_backend(
        Settings(face_backend="insightface", det_model=det, rec_model=rec, device="cpu")
    )
    assert isinstance(backend, InsightFaceBackend) and backend.name == "insightface"
    assert backend.default_threshold == 0.5
    faces = backend.detect(np.zeros((100, 200, 3), np.uint8))
    assert len(faces) == 2 and backend.embed(np.zeros((100, 200, 3), np.uint8), faces[0]).shape == (3,)


def test_create_face_backend_asks_the_store_without_overrides(tmp_path):
    from lipsync.config import Settings
    from lipsync.faces import create_face_backend

    det, rec = _write_models(tmp_path)

    class Store:
        def face_model_paths(self):
            return det, rec

    backend = create_face_backend(Settings(face_backend="insightface", device="cpu"), Store())
    assert isinstance(backend, InsightFaceBackend)


def test_create_face_backend_clear_errors(tmp_path, monkeypatch):
    import sys

    from lipsync.config import Settings
    from lipsync.errors import ModelNotAvailable
    from lipsync.faces import create_face_backend

    det, _ = _write_models(tmp_path)
    with pytest.raises(ModelNotAvailable, match=r"missing\.onnx"):
        create_face_backend(Settings(det_model=det, rec_model=tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="cannot load"):
        create_face_backend(Settings(det_model=bad, rec_model=bad))
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if the offline extra were not installed
    with pytest.raises(ModelNotAvailable, match=r"lipsync\[offline\]"):
        create_face_backend(Settings(face_backend="dlib"))
