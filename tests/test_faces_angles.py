"""Faces at any angle, on real photos and clips with the real SCRFD-2.5G detector from ../shared.

Photos are rotated by their pixels (20, 45, 90, 180, 270 degrees); the face must be found through the
tracker (quarter-turn fallback on), and the region a marker generator paints must land on the mouth known
from the upright photo's landmarks, rotated: within 10 % of the eye distance. Upright real clips keep
today's output bit for bit. The rotation-jump rules of the tracker are checked with a detector double.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from conftest import shared_file, shared_model
from lipsync.faces import TrackingOptions, track_characters
from lipsync.faces.angles import AngleDetector, turn_back
from lipsync.faces.pose import angle_gap, roll_degrees, template_fit
from lipsync.stages.align_crop import TEMPLATE_BOX, crop_face, crop_mask, face_crop, paste_face
from lipsync.stages.composite import composite_face
from lipsync.stages.lipsync import FACE_SIZE, postprocess_face, prepare_face
from lipsync.types import Box, Face

PORTRAITS = ["obama.jpg", "obama2.jpg", "biden.jpg", "biden2.jpg", "rose_leslie1.jpg", "rose_leslie2.jpg"]
ANGLES = [20, 45, 90, 180, 270]
NO_PADS = (0, 0, 0, 0)


class ScrfdOnly:
    """A face backend of the real SCRFD detector and a constant embedding (identity is not under test)."""

    name = "scrfd"
    default_threshold = 0.5

    def __init__(self, detector) -> None:
        self.detector = detector

    def detect(self, frame):
        return self.detector.detect(frame)

    def embed(self, frame, face):
        return np.ones(8, np.float32) / math.sqrt(8)

    def similarity(self, a, b):
        return 1.0


@pytest.fixture(scope="module")
def scrfd():
    import onnxruntime as ort

    from lipsync.faces import SCRFDDetector

    options = ort.SessionOptions()
    options.log_severity_level = 3
    path = shared_model("scrfd_2.5g_bnkps_320.onnx")
    return SCRFDDetector(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))


def rotate(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned clockwise on screen by ``degrees`` on a canvas that holds all of it, and the 2x3
    matrix taking original pixels to the turned ones."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = round(h * sin + w * cos), round(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR), m


class Marker:
    """A generator double that paints a disc where this face's mouth sits in an aligned crop (known from
    the upright photo: its mouth centre in the template frame), and keeps the rest of the face."""

    batch_size = 1

    def __init__(self, upright_landmarks: np.ndarray) -> None:
        inv = np.linalg.inv(np.vstack([template_fit(upright_landmarks), [0, 0, 1]]))[:2]
        mouth = upright_landmarks[3:].mean(axis=0)
        t = inv[:, :2] @ mouth + inv[:, 2]
        tcx, tcy, tw, th = TEMPLATE_BOX
        self.centre = (((t[0] - tcx) / tw + 0.5) * FACE_SIZE, ((t[1] - tcy) / th + 0.5) * FACE_SIZE)

    def __call__(self, faces, mels):
        out = faces.copy()
        for face in out:
            cv2.circle(face, (round(self.centre[0]), round(self.centre[1])), 5, (255, 0, 255), -1)
        return out


def _painted_centroid(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Centre of the pixels the marker turned magenta (the rest of the pasted face is only resampled)."""
    b, g, r = (after[..., k].astype(int) for k in range(3))
    magenta = (b > 170) & (r > 170) & (g < 90)
    was = (before[..., 0] > 170) & (before[..., 2] > 170) & (before[..., 1] < 90)
    ys, xs = np.nonzero(magenta & ~was)
    assert len(xs) > 20, "the marker left no visible mark"
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


@pytest.mark.shared_media
@pytest.mark.parametrize("name", PORTRAITS)
def test_rotated_photo_face_found_and_marker_lands_on_the_mouth(scrfd, name):
    image = cv2.imread(str(shared_file(name)))
    upright = max(scrfd.detect(image), key=lambda f: f.box.area)
    lm = upright.landmarks
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    marker = Marker(lm)
    errors = {}
    for angle in ANGLES:
        turned, m = rotate(image, angle)
        tracks = track_characters([turned], ScrfdOnly(scrfd), options=TrackingOptions(detect_angles="fallback"))
        assert tracks and 0 in tracks[0].points, f"{name} at {angle} degrees: no face"
        point = tracks[0].points[0]
        crop = face_crop(point.box, point.landmarks, NO_PADS, turned.shape[1], turned.shape[0])
        assert crop is not None and not crop.upright
        generated = marker(crop_face(turned, crop)[None], None)[0]
        out = paste_face(turned, generated, crop, crop_mask(crop), poisson=False).frame
        expected = m[:, :2] @ lm[3:].mean(axis=0) + m[:, 2]
        errors[angle] = float(np.linalg.norm(_painted_centroid(turned, out) - expected)) / iod
    assert max(errors.values()) <= 0.10, f"{name}: marker error / eye distance {errors}"


@pytest.mark.shared_media
@pytest.mark.parametrize("angle", [90, 180, 270])
def test_default_detection_does_not_search_quarter_turns(scrfd, angle):
    image, _ = rotate(cv2.imread(str(shared_file("obama.jpg"))), angle)
    upright_only = AngleDetector(ScrfdOnly(scrfd))
    upright_only.detect(image)
    fallback = AngleDetector(ScrfdOnly(scrfd), fallback=True)
    faces = fallback.detect(image)
    assert fallback.fallbacks == 1 and upright_only.fallbacks == 0
    assert faces and angle_gap(roll_degrees(faces[0].landmarks), angle) < 15  # turned clockwise: roll +angle


@pytest.mark.shared_media
@pytest.mark.parametrize("name", ["talking_chaplin_850x480_30fps.mp4", "talking_monalisa_1280x720_29.97fps.mp4"])
def test_upright_real_clips_keep_todays_output(scrfd, name):
    from lipsync.media import iter_frames

    pads = (0, 20, 0, 0)
    for i, frame in enumerate(iter_frames(shared_file(name))):
        if i >= 60:
            break
        if i % 6:
            continue
        face = scrfd.detect(frame)[0]
        h, w = frame.shape[:2]
        generated = lambda f: np.clip(f.astype(int) * [0.7, 0.8, 1.2], 0, 255).astype(np.uint8)  # noqa: E731
        box = face.box.padded(pads, w, h)
        today = composite_face(frame, postprocess_face(generated(prepare_face(frame, box)), box), box).frame
        crop = face_crop(face.box, face.landmarks, pads, w, h)
        assert crop.upright, f"frame {i}: roll {roll_degrees(face.landmarks):.1f}"
        now = paste_face(frame, generated(crop_face(frame, crop)), crop, crop_mask(crop)).frame
        assert np.array_equal(today, now), f"frame {i}"


# --- turning back and rotation jumps ----------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0, 90, 180, 270])
def test_turn_back_inverts_cv2_rotate(angle):
    h, w = 30, 50
    image = np.zeros((h, w, 3), np.uint8)
    image[7, 11] = 255
    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    turned = image if angle == 0 else cv2.rotate(image, codes[angle])
    ys, xs = np.nonzero(turned[..., 0])
    back = turn_back(np.array([[xs[0] + 0.5, ys[0] + 0.5]]), angle, w, h)
    assert np.allclose(back, [[11.5, 7.5]])
    with pytest.raises(ValueError, match="quarter"):
        turn_back(back, 45, w, h)


class _Scripted:
    """A detector double: frame i holds a face given by a script (its roll); regions searched by the
    upright refinement (any other image size) hold nothing, so the scripted face is kept as it is."""

    name = "scripted"
    default_threshold = 0.5

    def __init__(self, rolls, size=(200, 200)) -> None:
        self.rolls, self.size = rolls, size

    def detect(self, frame):
        if frame.shape[:2] != self.size:
            return []
        i = int(frame[0, 0, 0])
        angle = math.radians(self.rolls[i])
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        from lipsync.faces.align import ARCFACE_TEMPLATE

        lm = ((ARCFACE_TEMPLATE - 56.0) * 0.8 @ rot.T + 100.0).astype(np.float32)
        return [Face(Box(55, 55, 145, 145), lm, 0.9)]

    def embed(self, frame, face):
        return np.ones(4, np.float32) / 2

    def similarity(self, a, b):
        return 1.0


def test_no_interpolation_or_smoothing_across_a_rotation_jump():
    rolls = [0.0] * 10 + [90.0] * 11  # the phone turns between frames 5 and 10
    frames = []
    for i in range(len(rolls)):
        f = np.full((200, 200, 3), 100, np.uint8)
        f[0, 0] = i
        frames.append(f)
    options = TrackingOptions(sample_every=5, temporal_smoothing=0.8, shot_change_threshold=1.0)
    (track,) = track_characters(frames, _Scripted(rolls), options=options)
    assert sorted(track.points) == list(range(len(rolls)))
    for i, point in track.points.items():
        roll = roll_degrees(point.landmarks)
        expected = 0.0 if i < 8 else 90.0  # frames 6, 7 hold frame 5; 8, 9 hold frame 10
        assert abs(roll - expected) < 1.0, f"frame {i}: roll {roll:.1f}"


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.shared_media
@pytest.mark.slow
@pytest.mark.parametrize("angle", [90, 200])
def test_pipeline_syncs_a_turned_video_on_the_mouth(scrfd, tmp_path, angle):
    """The whole pipeline on a video of a real photo turned by ``angle`` (even sizes for yuv420p): the
    face is found (fallback on), cropped aligned, and the marker lands on the mouth in the output file."""
    from lipsync.config import Settings
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
    from pipeline_fixtures import decode_frames, write_speechlike_wav, write_video

    image = cv2.imread(str(shared_file("obama.jpg")))
    image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    upright = max(scrfd.detect(image), key=lambda f: f.box.area)
    turned, m = rotate(image, angle)
    turned = np.ascontiguousarray(turned[: turned.shape[0] // 2 * 2, : turned.shape[1] // 2 * 2])
    video = write_video(tmp_path / "turned.mp4", [turned] * 5, 5, crf=0)
    audio = write_speechlike_wav(tmp_path / "a.wav", 0.2)
    pipe = LipSyncPipeline(Settings(models_dir=tmp_path / "models"), generator=Marker(upright.landmarks),
                           face_backend=ScrfdOnly(scrfd))  # fmt: skip
    options = LipSyncOptions(enhance="off", pads=[0, 0, 0, 0], detect_angles="fallback", poisson_blending=False,
                             crf=0, loop_mode="none", occlusion_mask="off")  # fmt: skip
    result = pipe(LipSyncRequest(video, audio, tmp_path / "out.mp4", (), options))
    stats = result.stats.characters["face"]
    assert stats.frames_synced == result.stats.frames == stats.frames_rotated > 0
    source = decode_frames(video)
    iod = float(np.linalg.norm(upright.landmarks[1] - upright.landmarks[0]))
    expected = m[:, :2] @ upright.landmarks[3:].mean(axis=0) + m[:, 2]
    for out, src in zip(decode_frames(result.output), source, strict=True):
        assert np.linalg.norm(_painted_centroid(src, out) - expected) / iod <= 0.10


@pytest.mark.shared_media
def test_pose_of_real_portraits_is_within_the_limits(scrfd):
    from lipsync.faces.pose import estimate_pose

    yaws = {}
    for name in PORTRAITS:
        face = max(scrfd.detect(cv2.imread(str(shared_file(name)))), key=lambda f: f.box.area)
        pose = estimate_pose(face.landmarks)
        assert not pose.beyond_limits(), f"{name}: {pose}"
        yaws[name] = pose.yaw
    assert abs(yaws["obama.jpg"]) < 5 and abs(yaws["obama2.jpg"]) > 10  # frontal vs a visibly turned head
    # Turning the photo turns the roll, not the yaw.
    turned, _ = rotate(cv2.imread(str(shared_file("obama.jpg"))), 60)
    pose = estimate_pose(AngleDetector(ScrfdOnly(scrfd)).detect(turned)[0].landmarks)
    assert abs(pose.roll - 60) < 5 and abs(pose.yaw - yaws["obama.jpg"]) < 5 and pose.beyond_limits()
