"""Tracks as JSON.

Schema (what ``lipsync track --json`` and the API's face-tracking write)::

    {
      "characters": [
        {
          "id": "obama",                # character id ("face" when no characters were given)
          "name": "Barack Obama",       # display name
          "frames": [                   # only frames where the face is present, ascending
            {
              "frame": 12,              # 0-based index in the constant-frame-rate decode
              "box": [x1, y1, x2, y2],  # unpadded face box in pixels of the displayed frame; x2/y2 exclusive
              "similarity": 0.83,       # 0..1 match to the character's references (backend-specific scale)
              "interpolated": false     # true: between detections (linear), not detected in this frame
            }
          ]
        }
      ],
      "fps": 29.97,                     # frames per second of the frame indices
      "num_frames": 425                 # frames in the video (absent frames simply have no entry)
    }

``include_landmarks=True`` adds ``"landmarks": [[x, y] * 5]`` (eyes, nose, mouth corners) per frame;
readers must ignore keys they do not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from lipsync.types import Box, Track, TrackPoint


def tracks_to_json(
    tracks: Sequence[Track], fps: float | Fraction, num_frames: int, *, include_landmarks: bool = False
) -> dict:
    """The JSON-ready dict described in the module docstring."""
    characters = []
    for track in tracks:
        frames = []
        for f in sorted(track.points):
            p = track.points[f]
            entry = {
                "frame": int(f),
                "box": [round(float(v), 2) for v in p.box.as_list()],
                "similarity": round(float(p.similarity), 4),
                "interpolated": bool(p.interpolated),
            }
            if include_landmarks:
                entry["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in p.landmarks]
            frames.append(entry)
        characters.append({"id": track.character_id, "name": track.name, "frames": frames})
    return {"characters": characters, "fps": round(float(fps), 6), "num_frames": int(num_frames)}


def tracks_from_json(data: dict) -> list[Track]:
    """Inverse of :func:`tracks_to_json` (landmarks are zeros when they were not written)."""
    tracks = []
    for ch in data.get("characters", []):
        track = Track(str(ch["id"]), str(ch.get("name", ch["id"])))
        for e in ch.get("frames", []):
            lm = np.asarray(e.get("landmarks", np.zeros((5, 2))), dtype=np.float32).reshape(5, 2)
            f = int(e["frame"])
            track.points[f] = TrackPoint(
                f,
                Box.from_seq(e["box"]),
                lm,
                float(e.get("similarity", 0.0)),
                bool(e.get("interpolated", False)),
            )
        tracks.append(track)
    return tracks
