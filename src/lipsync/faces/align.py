"""Geometry shared by the detectors and recognisers: letterboxing and 5-point similarity alignment."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The five-point template of insightface's 112x112 ArcFace crops (left eye, right eye, nose tip,
# left mouth corner, right mouth corner; "left" = smaller x in the image). Published numbers.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_SIZE = 112


@dataclass(frozen=True, slots=True)
class Letterbox:
    """An image resized to fit ``size`` with its aspect kept, padded on the bottom and right."""

    image: np.ndarray  # (H, W, 3) of the target size
    scale_x: float  # resized width / original width
    scale_y: float  # resized height / original height (equal to scale_x up to rounding)
    content_width: int
    content_height: int

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2k) interleaved x, y coordinates in the letterboxed image back to the original."""
        pts = np.asarray(points, dtype=np.float32).copy()
        pts[..., 0::2] /= self.scale_x
        pts[..., 1::2] /= self.scale_y
        return pts


def letterbox(image: np.ndarray, width: int, height: int) -> Letterbox:
    """Fit ``image`` into (width, height) keeping its aspect; padding goes bottom/right so that
    coordinates scale back with one division and no offset."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w = max(1, min(width, round(w * scale)))
    new_h = max(1, min(height, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    canvas = np.zeros((height, width, 3), dtype=image.dtype)
    canvas[:new_h, :new_w] = resized
    # Rounding makes the two axes differ slightly; keep both so mapping back is exact.
    return Letterbox(canvas, new_w / w, new_h / h, new_w, new_h)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` points to
    ``dst`` points, as a 2x3 matrix for cv2.warpAffine.

    Umeyama's closed form: centre both sets, take the SVD of their covariance for the rotation (with a
    reflection guard), the scale from the source variance, then the translation between centroids.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError("similarity_transform needs two equal sets of at least 2 points")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection fits better: forbid it
        fix[1, 1] = -1.0
    rot = u @ fix @ vt
    scale = (sig * np.diag(fix)).sum() / var_s if var_s > 0 else 1.0
    trans = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, trans[:, None]]).astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` crop whose five landmarks sit on the ArcFace template."""
    template = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float32), template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    if len(boxes) == 0:
        return []
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return keep
