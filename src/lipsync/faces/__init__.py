"""Face analysis: detection, recognition, character matching, streaming tracking, visualisation.

Backends (``Settings.face_backend``):

- ``insightface`` (default): SCRFD detection + ArcFace recognition (buffalo_l) on onnxruntime.
  Similarity = cosine of the 512-d embeddings clipped to [0, 1]; default threshold 0.5.
- ``dlib`` (``pip install 'lipsync[offline]'``): HOG detection, 68-point landmarks, 128-d ResNet
  descriptor; similarity = clip(1 - d / 0.86, 0, 1) on normalised descriptors; default threshold 0.5.
"""

from lipsync.faces.align import ARCFACE_TEMPLATE, align_face, letterbox, similarity_transform
from lipsync.faces.arcface import ArcFaceRecognizer
from lipsync.faces.backend import (
    FaceBackend,
    InsightFaceBackend,
    create_face_backend,
    create_session,
    embed_faces,
    face_device,
)
from lipsync.faces.matching import CharacterRef, build_references, match_faces, reference_embedding
from lipsync.faces.scrfd import SCRFDDetector
from lipsync.faces.serialize import tracks_from_json, tracks_to_json
from lipsync.faces.shots import ShotChangeDetector
from lipsync.faces.streaming import StreamingTracker, track_characters
from lipsync.faces.tracking import TrackingOptions, pad_track
from lipsync.faces.visualize import draw_tracks, render_tracking


def __getattr__(name: str):
    # DlibBackend imports nothing heavy at module level, but keep the optional extra out of the import
    # path of users who never ask for it.
    if name == "DlibBackend":
        from lipsync.faces.dlib_backend import DlibBackend

        return DlibBackend
    raise AttributeError(name)


__all__ = [
    "ARCFACE_TEMPLATE",
    "ArcFaceRecognizer",
    "CharacterRef",
    "DlibBackend",
    "FaceBackend",
    "InsightFaceBackend",
    "SCRFDDetector",
    "ShotChangeDetector",
    "StreamingTracker",
    "TrackingOptions",
    "align_face",
    "build_references",
    "create_face_backend",
    "create_session",
    "draw_tracks",
    "embed_faces",
    "face_device",
    "letterbox",
    "match_faces",
    "pad_track",
    "reference_embedding",
    "render_tracking",
    "similarity_transform",
    "track_characters",
    "tracks_from_json",
    "tracks_to_json",
]
