"""ArcFace recogniser (InsightFace's w600k_r50) on an onnxruntime session.

Pre-processing as insightface's arcface_onnx: similarity-align the five landmarks onto the 112x112
template, convert BGR -> RGB (insightface's ``blobFromImage(..., swapRB=True)``), (x - 127.5) / 127.5,
NCHW float32. The output vector is L2-normalised.

Similarity: cosine of two normalised embeddings, clipped to [0, 1] (negative cosine means "clearly not the
same person" and maps to 0). Same-identity ArcFace pairs usually score well above 0.5 on frontal
faces and different people close to 0, so the brief's default threshold of 0.5 is a conservative match.
"""

from __future__ import annotations

import numpy as np

from lipsync.errors import ModelError
from lipsync.faces.align import ARCFACE_SIZE, align_face
from lipsync.types import Face

INSIGHTFACE_DEFAULT_THRESHOLD = 0.5


def l2_normalise(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm <= 1e-12:
        raise ModelError("the face recogniser returned a zero or non-finite embedding")
    return v / norm


def cosine_similarity01(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two L2-normalised vectors, clipped to [0, 1]."""
    return float(np.clip(np.dot(np.asarray(a, np.float32), np.asarray(b, np.float32)), 0.0, 1.0))


class ArcFaceRecognizer:
    """512-d identity embeddings from aligned face crops."""

    def __init__(self, session) -> None:
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else ARCFACE_SIZE
        self.input_size = int(size)
        self.output_name = session.get_outputs()[0].name

    def preprocess(self, frame_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        crop = align_face(frame_bgr, landmarks, self.input_size)
        rgb = crop[:, :, ::-1].astype(np.float32)
        return np.ascontiguousarray(((rgb - 127.5) / 127.5).transpose(2, 0, 1)[None])

    def embed(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        blob = self.preprocess(frame_bgr, face.landmarks)
        (out,) = self.session.run([self.output_name], {self.input_name: blob})
        return l2_normalise(out)

    def embed_many(self, frame_bgr: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """Embeddings of several faces of one frame, in one batch when the model allows it."""
        if not faces:
            return []
        batch_dim = self.session.get_inputs()[0].shape[0]
        if isinstance(batch_dim, int) and batch_dim == 1:
            return [self.embed(frame_bgr, f) for f in faces]
        blob = np.concatenate([self.preprocess(frame_bgr, f.landmarks) for f in faces])
        (out,) = self.session.run([self.output_name], {self.input_name: blob})
        return [l2_normalise(row) for row in np.asarray(out).reshape(len(faces), -1)]
