"""Shared helpers for pipeline-level tests (also used by the API tests and benchmarks/pipeline.py).

* seeded random-weight checkpoints of the real networks, saved in the real file formats;
* synthetic "cartoon face" videos whose faces have known boxes and identities (one colour per identity),
  with ``ColorFaceBackend``, a deterministic FaceBackend that finds those faces by colour, so the real
  tracker runs without a slow detector;
* videos built from real photos (for the dlib backend);
* speech-like audio, PSNR, decoding helpers, and mouth-generator test doubles.

Everything here is importable without pytest and without ../shared.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from lipsync.types import Box, Face

# --- random-weight checkpoints in the real formats ------------------------------------------------------


def write_random_wav2lip(
    path: Path, *, seed: int = 0, name: str = "wav2lip_gan", module_prefix: bool = False
) -> Path:
    """A seeded random Wav2Lip saved like the public file: legacy (non-zip) pickle, weights under state_dict."""
    import torch

    from lipsync.nets import NETWORKS

    torch.manual_seed(seed)
    net = NETWORKS[name]()
    state = net.state_dict()
    if module_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    payload = {"global_epoch": 0, "global_step": 0, "state_dict": state}
    path = Path(path)
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    return path


def write_random_gfpgan(path: Path, *, seed: int = 0) -> Path:
    """A seeded random GFPGAN v1.4 saved like the public file: zip format, weights under params_ema."""
    import torch

    from lipsync.nets import NETWORKS

    torch.manual_seed(seed)
    net = NETWORKS["gfpgan_v1.4"]()
    path = Path(path)
    torch.save({"params_ema": net.state_dict()}, path)
    return path


# --- audio ----------------------------------------------------------------------------------------------


def write_speechlike_wav(path: Path, seconds: float, *, sample_rate: int = 16000, seed: int = 0) -> Path:
    """Voiced-looking audio: a 120 Hz buzz with formant-ish harmonics, syllable-rate amplitude modulation."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    buzz = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3.5 * t + rng.uniform(0, 6)), 0, None) ** 2
    signal = 0.25 * envelope * buzz + 0.01 * rng.standard_normal(n)
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return Path(path)


# --- synthetic faces ------------------------------------------------------------------------------------

#: Identity colours (BGR): saturated and far apart, so H.264 never confuses them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 220),
    "blue": (220, 60, 40),
    "green": (40, 200, 40),
    "yellow": (30, 210, 230),
}


def face_landmarks(box: Box) -> np.ndarray:
    """Where draw_face puts the eyes, nose tip and mouth corners for a face box (SCRFD order)."""
    w, h = box.width, box.height
    rel = np.array([[0.32, 0.38], [0.68, 0.38], [0.5, 0.58], [0.36, 0.76], [0.64, 0.76]], np.float32)
    return (rel * (w, h) + (box.x1, box.y1)).astype(np.float32)


def draw_face(img: np.ndarray, box: Box, color: tuple[int, int, int], mouth_open: float = 0.3) -> None:
    """A cartoon face filling ``box``: an ellipse of the identity colour, eyes, a nose and a mouth."""
    cx, cy = box.center
    axes = (int(box.width / 2), int(box.height / 2))
    cv2.ellipse(img, (int(cx), int(cy)), axes, 0, 0, 360, color, -1, cv2.LINE_AA)
    lm = face_landmarks(box)
    eye_r = max(2, int(box.width * 0.06))
    for x, y in lm[:2]:
        cv2.circle(img, (int(x), int(y)), eye_r, (30, 30, 30), -1, cv2.LINE_AA)
    nx, ny = lm[2]
    cv2.circle(img, (int(nx), int(ny)), max(1, eye_r // 2), (60, 60, 90), -1, cv2.LINE_AA)
    mx, my = (lm[3] + lm[4]) / 2
    mouth_axes = (int(box.width * 0.14), max(1, int(box.height * 0.08 * (0.2 + mouth_open))))
    cv2.ellipse(img, (int(mx), int(my)), mouth_axes, 0, 0, 360, (20, 20, 90), -1, cv2.LINE_AA)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured grey background (never one of the palette colours)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 110 + 30 * np.sin(xx / 23.0 + rng.uniform(0, 3)) * np.cos(yy / 31.0)
    img = np.repeat(base[..., None], 3, axis=2)
    img[..., 0] += 8
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FaceSpec:
    """One synthetic person: a palette colour and a function from frame index to its box (None: absent)."""

    color: str
    box_at: Callable[[int], Box | None]


def moving_box(
    x: float, y: float, w: float, h: float, dx: float = 0.0, dy: float = 0.0
) -> Callable[[int], Box]:
    def box_at(i: int) -> Box:
        return Box(x + dx * i, y + dy * i, x + dx * i + w, y + dy * i + h)

    return box_at


def render_synthetic_frame(width: int, height: int, faces: Sequence[FaceSpec], index: int) -> np.ndarray:
    img = background(width, height)
    for spec in faces:
        box = spec.box_at(index)
        if box is not None:
            draw_face(img, box, PALETTE[spec.color], mouth_open=0.5 + 0.5 * math.sin(index / 2.0))
    return img


def write_video(
    path: Path, frames: Sequence[np.ndarray] | Callable[[int], np.ndarray], num_frames: int, fps: int = 25,
    *, crf: int = 18, audio: np.ndarray | None = None, audio_rate: int = 16000,
) -> Path:  # fmt: skip
    """H.264 yuv420p MP4 from BGR frames (a list, or a function of the index), optionally with mono audio."""
    get = frames if callable(frames) else frames.__getitem__
    first = get(0)
    height, width = first.shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        astream = container.add_stream("aac", rate=audio_rate) if audio is not None else None
        if astream is not None:
            astream.layout = "mono"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(get(i) if i else first, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None and audio is not None:
            pcm = np.ascontiguousarray(audio, dtype=np.float32)[None, :]
            aframe = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
            aframe.sample_rate = audio_rate
            for packet in astream.encode(aframe):
                container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return Path(path)


def write_synthetic_video(
    path: Path, faces: Sequence[FaceSpec], *, width: int = 256, height: int = 192, fps: int = 25, seconds: float = 2.0,
    crf: int = 18,
) -> Path:  # fmt: skip
    n = round(fps * seconds)
    return write_video(path, lambda i: render_synthetic_frame(width, height, faces, i), n, fps, crf=crf)


def write_reference_image(path: Path, color: str, size: int = 160) -> Path:
    img = background(size, size, seed=1)
    draw_face(img, Box(size * 0.2, size * 0.15, size * 0.8, size * 0.9), PALETTE[color])
    cv2.imwrite(str(path), img)
    return Path(path)


class ColorFaceBackend:
    """A deterministic FaceBackend for synthetic videos: a face is a blob of one palette colour.

    The embedding is one-hot over the palette, so similarity is 1 for the same colour and 0 otherwise.
    """

    name = "color-test"
    default_threshold = 0.5

    def __init__(self, palette: dict[str, tuple[int, int, int]] | None = None, tolerance: int = 45,
                 min_area: int = 150) -> None:  # fmt: skip
        self.palette = dict(palette or PALETTE)
        self.names = list(self.palette)
        self.tolerance = tolerance
        self.min_area = min_area
        self.detect_calls = 0

    def _mask(self, frame: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
        diff = np.abs(frame.astype(np.int16) - np.array(color, np.int16)).max(axis=2)
        return (diff <= self.tolerance).astype(np.uint8)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        self.detect_calls += 1
        faces: list[Face] = []
        for idx, name in enumerate(self.names):
            mask = self._mask(frame_bgr, self.palette[name])
            # Features (eyes, mouth) punch holes in the blob; closing keeps one component per face.
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            for c in range(1, count):
                x, y, w, h, area = stats[c]
                if area < self.min_area:
                    continue
                box = Box(float(x), float(y), float(x + w), float(y + h))
                emb = np.zeros(len(self.names), np.float32)
                emb[idx] = 1.0
                faces.append(Face(box, face_landmarks(box), 0.99, emb))
        faces.sort(key=lambda f: -f.box.area)
        return faces

    def embed(self, frame_bgr: np.ndarray, face: Face) -> np.ndarray:
        if face.embedding is not None:
            return face.embedding
        x1, y1, x2, y2 = (int(v) for v in face.box.as_list())
        crop = frame_bgr[y1:y2, x1:x2]
        scores = [self._mask(crop, self.palette[n]).mean() for n in self.names]
        emb = np.zeros(len(self.names), np.float32)
        emb[int(np.argmax(scores))] = 1.0
        return emb

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.clip(np.dot(a, b), 0.0, 1.0))


# --- real photos ----------------------------------------------------------------------------------------


def write_photo_video(
    path: Path, photo: Path, *, width: int = 320, height: int = 240, fps: int = 25, seconds: float = 2.0,
    pan: float = 12.0, center: tuple[float, float] = (0.5, 0.5),
) -> Path:  # fmt: skip
    """A video of a real photo, scaled to cover width x height, slowly panning (so tracking has to follow).

    ``center`` (fractions of the photo's width and height) is where the window looks: put the face there."""
    img = cv2.imread(str(photo))
    if img is None:
        raise FileNotFoundError(photo)
    scale = max((width + 2 * pan) / img.shape[1], (height + 2 * pan) / img.shape[0])
    big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    n = round(fps * seconds)
    oy = int(np.clip(center[1] * big.shape[0] - height / 2, 0, big.shape[0] - height))
    ox0 = int(np.clip(center[0] * big.shape[1] - width / 2, pan, big.shape[1] - width - pan))

    def frame(i: int) -> np.ndarray:
        ox = round(ox0 + pan * math.sin(2 * math.pi * i / max(1, n)))
        return np.ascontiguousarray(big[oy : oy + height, ox : ox + width])

    return write_video(path, frame, n, fps)


# --- measuring ------------------------------------------------------------------------------------------


def decode_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a (small) video, BGR."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def stream_durations(path: Path) -> tuple[int, float, float]:
    """(decoded video frames, their duration at the stream's fps, the audio stream's duration in s).

    The audio duration is the container's (what players use: the AAC priming and the padding of the last
    1024-sample packet are cut by the edit list), not a count of decoded samples."""
    from lipsync.media import probe

    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
        frames = sum(1 for _ in container.decode(video=0))
    info = probe(path)
    return frames, frames / fps, float(info.audio_duration or 0.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --- mouth-generator test doubles (the MouthGenerator protocol) -----------------------------------------


class IdentityGenerator:
    """Returns each face unchanged; records how it was called."""

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        self.calls.append((faces.shape, mels.shape))
        return faces.copy()


class BrightnessGenerator(IdentityGenerator):
    """Returns each face brightened by ``delta`` (a flat shift: Poisson blending should hide its edge)."""

    def __init__(self, delta: int = 60, batch_size: int = 8) -> None:
        super().__init__(batch_size)
        self.delta = delta

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        super().__call__(faces, mels)
        return np.clip(faces.astype(np.int16) + self.delta, 0, 255).astype(np.uint8)


class MouthMarkGenerator(IdentityGenerator):
    """Draws a white bar where the mouth is (a change Poisson blending keeps, unlike a flat shift)."""

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        super().__call__(faces, mels)
        out = faces.copy()
        out[:, 62:74, 30:66] = 255
        return out


def reencode_reference(
    src: Path, plan, out: Path, *, crf: int = 18, preset: str = "medium"
) -> list[np.ndarray]:
    """The input as the pipeline would write it untouched: decoded, laid out by the loop plan, re-encoded
    with the same encoder settings, decoded again. Identity output must match this, not the raw input."""
    from lipsync.media import FrameReader, VideoWriter, probe
    from lipsync.stages.frames import render_plan_frame

    info = probe(src)
    writer = VideoWriter(out, info.display_width, info.display_height, info.fps, crf=crf, preset=preset)
    with FrameReader(src, info=info, max_blocks=4) as reader, writer:
        for i in range(len(plan)):
            writer.write(render_plan_frame(reader.get, plan[i]))
    return decode_frames(out)


def face_support(shape: tuple[int, ...], boxes: Sequence[Box], dilate: int = 0) -> np.ndarray:
    """Where composite_face may change pixels for these (padded, integer) boxes: the lower-face mask's support,
    optionally dilated by ``dilate`` pixels (H.264 spreads a change over its 4x4 / 8x8 blocks)."""
    from lipsync.stages.composite import lower_face_mask

    out = np.zeros(shape[:2], bool)
    for box in boxes:
        x1, y1, x2, y2 = (int(v) for v in box.as_list())
        out[y1:y2, x1:x2] |= lower_face_mask(y2 - y1, x2 - x1) > 0
    if dilate:
        out = cv2.dilate(out.astype(np.uint8), np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)) > 0
    return out
