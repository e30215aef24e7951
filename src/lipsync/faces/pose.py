"""Head pose from the five landmarks: roll (in-plane rotation), an approximate yaw, and the landmark
similarity fit the aligned crop is built on.

Roll is the rotation of the least-squares similarity that takes the ArcFace five-point template to the
landmarks (all five points, so one noisy eye does not tilt it); 0 is upright, positive turns the face
clockwise on screen (image y points down), range (-180, 180].

Yaw is estimated from how far the nose tip sits from the line through the eye and mouth midpoints, in the
face's own upright frame, relative to the eye distance: on a frontal face it is 0. For a head of typical
proportions the nose tip stands about ``NOSE_DEPTH`` eye distances in front of the eye plane, so the offset
is ``NOSE_DEPTH * sin(yaw)`` while the eye distance shrinks by ``cos(yaw)``: yaw = atan(ratio / NOSE_DEPTH).
It is an estimate (a few degrees on frontal photos, more at large angles), good enough to warn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipsync.faces.align import ARCFACE_TEMPLATE, similarity_transform

#: Nose-tip depth in front of the eyes, in eye distances (anthropometric average, about 0.55).
NOSE_DEPTH = 0.55
#: Wav2Lip is trained on near-frontal faces (LRS2): beyond these the synced mouth degrades; the render
#: warns and counts such frames. Roll is corrected by the aligned crop, so its limit is wider: it is where
#: SCRFD's landmarks themselves become unreliable without the rotation fallback.
YAW_LIMIT_DEG = 35.0
ROLL_LIMIT_DEG = 45.0


@dataclass(frozen=True, slots=True)
class Pose:
    roll: float  # degrees, (-180, 180]
    yaw: float  # degrees, signed: positive when the nose points to the image's right
    scale: float  # template units -> frame pixels (the ArcFace 112 template)

    def beyond_limits(self, yaw_limit: float = YAW_LIMIT_DEG, roll_limit: float = ROLL_LIMIT_DEG) -> bool:
        return abs(self.yaw) > yaw_limit or abs(self.roll) > roll_limit


def template_fit(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 similarity taking ArcFace-template points (112 px units) to ``landmarks`` (frame pixels)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks must be finite")
    return similarity_transform(ARCFACE_TEMPLATE, lm).astype(np.float64)


def roll_degrees(landmarks: np.ndarray) -> float:
    m = template_fit(landmarks)
    return math.degrees(math.atan2(m[1, 0], m[0, 0]))


def estimate_pose(landmarks: np.ndarray) -> Pose:
    """Roll, approximate yaw and scale of one face from its five landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    m = template_fit(lm)
    scale = math.hypot(m[0, 0], m[1, 0])
    roll = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    # Undo roll: the face's own frame, x to its right, y down.
    c, s = m[0, 0] / max(scale, 1e-9), m[1, 0] / max(scale, 1e-9)
    up = (lm - lm.mean(axis=0)) @ np.array([[c, -s], [s, c]])
    eye_mid, mouth_mid = (up[0] + up[1]) / 2.0, (up[3] + up[4]) / 2.0
    iod = max(float(np.linalg.norm(up[1] - up[0])), 1e-6)
    # x of the eye-mouth midline at the nose's height.
    span = mouth_mid[1] - eye_mid[1]
    t = (up[2, 1] - eye_mid[1]) / span if abs(span) > 1e-6 else 0.5
    mid_x = eye_mid[0] + t * (mouth_mid[0] - eye_mid[0])
    yaw = math.degrees(math.atan((up[2, 0] - mid_x) / iod / NOSE_DEPTH))
    return Pose(roll=roll, yaw=yaw, scale=scale)


def angle_gap(a: float, b: float) -> float:
    """The smallest difference between two angles in degrees, 0-180."""
    return abs((a - b + 180.0) % 360.0 - 180.0)
