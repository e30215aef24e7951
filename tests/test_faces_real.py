"""Real faces from ../shared/media: the dlib backend end to end, and the SCRFD wrapper on a real model."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from conftest import shared_file, shared_model
from lipsync.faces import CharacterRef, match_faces, reference_embedding
from lipsync.faces.backend import embed_faces, similarity_matrix
from lipsync.types import Character

pytestmark = pytest.mark.shared_media

PORTRAITS = ["obama.jpg", "obama2.jpg", "biden.jpg", "biden2.jpg", "rose_leslie1.jpg", "rose_leslie2.jpg"]


def _read(name: str) -> np.ndarray:
    image = cv2.imread(str(shared_file(name)))
    assert image is not None
    return image


@pytest.fixture(scope="module")
def dlib_backend():
    if (
        importlib.util.find_spec("dlib") is None
        or importlib.util.find_spec("face_recognition_models") is None
    ):
        pytest.skip("needs the offline extra (dlib-bin, face_recognition_models)")
    from lipsync.faces.dlib_backend import DlibBackend

    return DlibBackend()


@pytest.fixture(scope="module")
def refs(dlib_backend) -> list[CharacterRef]:
    return [
        reference_embedding(dlib_backend, Character("obama", "Barack Obama", (shared_file("obama.jpg"),))),
        reference_embedding(dlib_backend, Character("biden", "Joe Biden", (shared_file("biden.jpg"),))),
    ]


def _assign(backend, refs, name):
    image = _read(name)
    faces = backend.detect(image)
    sims = similarity_matrix(backend, embed_faces(backend, image, faces), [r.embedding for r in refs])
    matches = match_faces(sims, backend.default_threshold)
    return faces, sims, {refs[m.character].id: faces[m.face] for m in matches}


@pytest.mark.parametrize("name", PORTRAITS)
def test_dlib_detects_the_face_in_each_portrait(dlib_backend, name):
    image = _read(name)
    faces = dlib_backend.detect(image)
    assert len(faces) == 1, f"{name}: {len(faces)} faces"
    face = faces[0]
    h, w = image.shape[:2]
    assert face.box.width > 0.1 * min(h, w)
    lm = face.landmarks
    # SCRFD order: eyes above nose above mouth, left features left of right ones, all inside the box.
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
    assert np.all(lm[:, 0] > face.box.x1 - 5) and np.all(lm[:, 0] < face.box.x2 + 5)


@pytest.mark.parametrize(("name", "who"), [("obama2.jpg", "obama"), ("biden2.jpg", "biden")])
def test_dlib_second_photo_matches_its_reference_only(dlib_backend, refs, name, who):
    _, sims, assigned = _assign(dlib_backend, refs, name)
    assert list(assigned) == [who]
    other = 1 - [r.id for r in refs].index(who)
    assert sims[0, other] < 0.45, "the other identity must be clearly below the threshold"


@pytest.mark.parametrize("name", ["rose_leslie1.jpg", "rose_leslie2.jpg"])
def test_dlib_third_identity_matches_neither(dlib_backend, refs, name):
    _, sims, assigned = _assign(dlib_backend, refs, name)
    assert assigned == {}
    assert sims.max() < 0.45


def test_dlib_two_people_are_assigned_correctly(dlib_backend, refs):
    faces, _, assigned = _assign(dlib_backend, refs, "obama_biden_two_people.jpg")
    assert len(faces) == 2
    assert assigned["obama"].box.center[0] < assigned["biden"].box.center[0]  # Obama stands on the left


def test_dlib_waving_photo_ignores_the_background_face(dlib_backend, refs):
    faces, _, assigned = _assign(dlib_backend, refs, "obama_and_biden_waving.jpg")
    assert len(faces) == 3
    assert set(assigned) == {"obama", "biden"}
    assert assigned["biden"].box.center[0] < assigned["obama"].box.center[0]  # Biden on the left here
    smallest = min(faces, key=lambda f: f.box.area)
    assert all(f is not smallest for f in assigned.values())


def test_dlib_similarity_mapping(dlib_backend, refs):
    from lipsync.faces.dlib_backend import distance_to_similarity

    assert distance_to_similarity(0.0) == 1.0 and distance_to_similarity(0.43) == pytest.approx(0.5)
    assert distance_to_similarity(2.0) == 0.0
    assert dlib_backend.similarity(refs[0].embedding, refs[0].embedding) == pytest.approx(1.0)
    assert np.linalg.norm(refs[0].embedding) == pytest.approx(1.0, abs=1e-5)


# --- SCRFD on a real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scrfd():
    import onnxruntime as ort

    from lipsync.faces import SCRFDDetector

    path = shared_model("scrfd_2.5g_bnkps_320.onnx")
    return SCRFDDetector(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


@pytest.mark.parametrize(
    ("name", "count"),
    [("obama.jpg", 1), ("obama_biden_two_people.jpg", 2), ("obama_and_biden_waving.jpg", 3)],
)
def test_scrfd_real_model_counts_faces(scrfd, name, count):
    assert (scrfd.input_width, scrfd.input_height) == (320, 320)  # read from the fixed-size model
    image = _read(name)
    faces = scrfd.detect(image)
    assert len(faces) == count
    for f in faces:
        assert f.score >= 0.5
        lm = f.landmarks
        inside = (
            (lm[:, 0] >= f.box.x1) & (lm[:, 0] <= f.box.x2) & (lm[:, 1] >= f.box.y1) & (lm[:, 1] <= f.box.y2)
        )
        assert inside.all(), "landmarks scaled back with the box"
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]


def test_scrfd_and_dlib_agree_on_where_the_faces_are(scrfd, dlib_backend):
    image = _read("obama_biden_two_people.jpg")
    a = sorted(scrfd.detect(image), key=lambda f: f.box.x1)
    b = sorted(dlib_backend.detect(image), key=lambda f: f.box.x1)
    for fa, fb in zip(a, b, strict=True):
        # The two detectors draw boxes differently (SCRFD includes the forehead); eyes must agree.
        np.testing.assert_allclose(fa.landmarks[:2], fb.landmarks[:2], atol=0.08 * fa.box.width)
