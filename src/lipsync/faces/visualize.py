"""Draw tracks on frames and render a tracking-check video with the source's audio."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import MediaError
from lipsync.types import Track

log = logging.getLogger(__name__)

# Distinct BGR colours, chosen to stay readable on skin tones and on each other.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 200, 0),
    (255, 128, 0),
    (0, 0, 255),
    (255, 0, 255),
    (0, 215, 255),
    (255, 255, 0),
    (128, 0, 128),
    (0, 128, 255),
)


def track_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_tracks(
    frame_bgr: np.ndarray, frame_index: int, tracks: Sequence[Track], *, copy: bool = True
) -> np.ndarray:
    """``frame_bgr`` with each track's box at ``frame_index`` in the track's colour, labelled
    "name 0.83"; interpolated points get a dashed box and an "(interp)" label with a hollow marker,
    detected points a filled marker."""
    out = frame_bgr.copy() if copy else frame_bgr
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    for k, track in enumerate(tracks):
        point = track.get(frame_index)
        if point is None:
            continue
        colour = track_colour(k)
        x1, y1, x2, y2 = (round(v) for v in point.box.as_list())
        if point.interpolated:
            _dashed_rect(out, (x1, y1), (x2, y2), colour, thickness)
        else:
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thickness, cv2.LINE_AA)
        label = f"{track.name} {point.similarity:.2f}" + (" (interp)" if point.interpolated else "")
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(h - 1, y2 + th + 4)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base), colour, cv2.FILLED)
        cv2.putText(
            out, label, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA
        )
        # The marker in the top-right corner: filled = detected here, hollow = interpolated.
        r = max(3, thickness * 3)
        centre = (max(r, x2 - r - 2), max(r, y1 + r + 2))
        cv2.circle(out, centre, r, colour, -1 if not point.interpolated else thickness, cv2.LINE_AA)
        for px, py in np.asarray(point.landmarks).reshape(-1, 2):
            if px > 0 or py > 0:
                cv2.circle(
                    out, (round(float(px)), round(float(py))), max(1, thickness), colour, -1, cv2.LINE_AA
                )
    return out


def _dashed_rect(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], colour, thickness: int) -> None:
    (x1, y1), (x2, y2) = p1, (p2[0] - 1, p2[1] - 1)
    dash = max(4, thickness * 4)
    for a, b, horizontal, fixed in (
        (x1, x2, True, y1),
        (x1, x2, True, y2),
        (y1, y2, False, x1),
        (y1, y2, False, x2),
    ):
        for s in range(a, b, dash * 2):
            e = min(b, s + dash)
            if horizontal:
                cv2.line(img, (s, fixed), (e, fixed), colour, thickness, cv2.LINE_AA)
            else:
                cv2.line(img, (fixed, s), (fixed, e), colour, thickness, cv2.LINE_AA)


def render_tracking(
    video: Path,
    tracks: Sequence[Track],
    out: Path,
    *,
    info=None,
    keep_audio: bool = True,
    crf: int = 23,
    preset: str = "veryfast",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``out`` (MP4): the frames of ``video`` with ``tracks`` drawn, at the source frame rate, with
    the source's audio (at its own rate, up to 48 kHz, channels kept) when it has any.

    The output starts at the first video frame, and the sound is moved by the streams' start times as a
    player would line them up: a clip whose picture starts 0.85 s after its sound keeps them in sync."""
    from lipsync.media import AudioSource, VideoWriter, iter_frames, probe, source_audio_offset

    video, out = Path(video), Path(out)
    info = info or probe(video)
    total = int(info.num_frames)
    with contextlib.ExitStack() as stack:
        audio = None
        if keep_audio and info.has_audio:
            rate = int(min(48000, max(16000, info.audio_sample_rate or 16000)))
            try:
                # Streamed from the file, so a long video's sound track is never held whole.
                offset = source_audio_offset(info, video)
                audio = stack.enter_context(
                    AudioSource.open(video, sample_rate=rate, mono=False, offset_s=offset)
                )
            except MediaError as exc:  # a broken sound track should not stop the visual check
                log.warning("tracking video without audio: %s", exc.message)
        writer = stack.enter_context(
            VideoWriter(
                out, info.display_width, info.display_height, info.fps, crf=crf, preset=preset, audio=audio
            )
        )
        for i, frame in enumerate(iter_frames(video, info=info)):
            writer.write(draw_tracks(frame, i, tracks, copy=False))
            if progress is not None:
                progress(i + 1, total)
    return out
