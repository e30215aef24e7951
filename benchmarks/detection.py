"""Cheap detection on CPU: what a smaller SCRFD input and sparser sampling cost in boxes, and save in time.

On every real clip of ../shared/media, tracking (no characters: the most prominent face) runs with

* ``today``: SCRFD at 640x640 input, detection every 5 frames (the defaults before issue 10);
* ``det320``: SCRFD at 320x320 (the new CPU default, ``LIPSYNC_DET_SIZE`` unset), every 5 frames;
* ``det320-every10``: 320 input, every 10 frames (sparser sampling);

and reports per case the tracking time per frame, and per frame the IoU of its box against today's box
(mean, minimum, share of frames at IoU >= 0.9) plus the frames whose pass-through decision (face / no
face) differs. The target (issue 10) is IoU >= 0.9 against today's boxes.

The detector is the real SCRFD-2.5G of ../shared/models. That file has a fixed 320x320 input, so the
benchmark makes a dynamic-input copy of it (in a temporary folder: input dimensions made symbolic, and
its two nearest-neighbour upsamplings given a scale of 2 instead of fixed output sizes; the weights are
untouched), which then runs at 640 exactly as det_10g would. Recognition uses a cheap stand-in (colour
statistics of the aligned crop; the real ArcFace weights are not in the store), the same for every case.

Usage:  .venv/bin/python benchmarks/detection.py [--quick]   (writes benchmarks/results/detection.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SCRFD = SHARED / "models" / "scrfd_2.5g_bnkps_320.onnx"
CLIPS = sorted((SHARED / "media").glob("*.mp4"))
CASES = {"today": (640, 5), "det320": (320, 5), "det320-every10": (320, 10)}


def dynamic_scrfd(src: Path, out: Path) -> Path:
    """A copy of a fixed-input SCRFD whose input size is free (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.output:  # anchor counts follow the input size
        output.type.tensor_type.shape.dim[0].dim_param = "anchors"
    scales = numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "upsample_scale_2")
    graph.initializer.append(scales)
    for node in graph.node:
        if node.op_type == "Resize" and len(node.input) == 4:
            x, roi = node.input[0], node.input[1]
            del node.input[:]
            node.input.extend([x, roi, "upsample_scale_2"])
    del graph.value_info[:]  # stale fixed shapes; onnxruntime re-infers them
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


class _StubBackend:
    """SCRFD detection + a cheap deterministic embedding (as benchmarks/faces.py)."""

    name = "scrfd+stub"
    default_threshold = 0.5

    def __init__(self, detector) -> None:
        self.detector = detector
        self.detect_seconds = 0.0
        self.detect_calls = 0

    def detect(self, frame):
        t = time.perf_counter()
        faces = self.detector.detect(frame)
        self.detect_seconds += time.perf_counter() - t
        self.detect_calls += 1
        return faces

    def embed(self, frame, face):
        from lipsync.faces.align import align_face

        crop = align_face(frame, face.landmarks, 32).astype(np.float32)
        v = np.concatenate([crop.mean(axis=(0, 1)), crop.std(axis=(0, 1)), [1.0]])
        return (v / np.linalg.norm(v)).astype(np.float32)

    def similarity(self, a, b):
        return float(np.clip(np.dot(a, b), 0, 1))


def _iou(a, b) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def track_clip(clip: Path, model: Path, size: int, every: int, frames: list) -> dict:
    import onnxruntime as ort

    from lipsync.faces import SCRFDDetector
    from lipsync.faces.tracking import TrackingOptions, track_characters

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    backend = _StubBackend(SCRFDDetector(session, input_size=size))
    t = time.perf_counter()
    tracks = track_characters(iter(frames), backend, (), TrackingOptions(sample_every=every), len(frames))
    seconds = time.perf_counter() - t
    return {
        "track": tracks[0],
        "ms_per_frame": 1000 * seconds / len(frames),
        "detect_ms_per_call": 1000 * backend.detect_seconds / max(1, backend.detect_calls),
        "detect_calls": backend.detect_calls,
    }


def compare(ref, other, n: int) -> dict:
    ious, disagree = [], 0
    for i in range(n):
        a, b = ref.get(i), other.get(i)
        if (a is None) != (b is None):
            disagree += 1
        elif a is not None:
            ious.append(_iou(a.box, b.box))
    arr = np.array(ious) if ious else np.array([1.0])
    return {
        "iou_mean": float(arr.mean()),
        "iou_min": float(arr.min()),
        "frames_iou_ge_0_9": float((arr >= 0.9).mean()),
        "presence_disagreements": disagree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first 60 frames of each clip")
    args = parser.parse_args()
    from lipsync.media import iter_frames

    if not SCRFD.exists() or not CLIPS:
        raise SystemExit(f"needs {SCRFD} and the clips of {SHARED / 'media'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = dynamic_scrfd(SCRFD, Path(tmp) / "scrfd_dynamic.onnx")
        for clip in CLIPS:
            frames = list(iter_frames(clip))[: 60 if args.quick else None]
            results = {
                name: track_clip(clip, model, size, every, frames) for name, (size, every) in CASES.items()
            }
            base = results["today"]
            for name, res in results.items():
                row = {
                    "clip": clip.name, "case": name, "input": CASES[name][0], "sample_every": CASES[name][1],
                    "frames": len(frames), "ms_per_frame": round(res["ms_per_frame"], 2),
                    "detect_ms_per_call": round(res["detect_ms_per_call"], 2), "detect_calls": res["detect_calls"],
                    "speedup_vs_today": round(base["ms_per_frame"] / res["ms_per_frame"], 2),
                    **{k: round(v, 4) if isinstance(v, float) else v
                       for k, v in compare(base["track"], res["track"], len(frames)).items()},
                }  # fmt: skip
                rows.append(row)
    head = f"{'clip':42s} {'case':15s} {'ms/frame':>9s} {'det ms':>7s} {'speedup':>8s} {'IoU mean':>9s} {'IoU min':>8s} {'>=0.9':>6s} {'presence':>8s}"
    print(head)
    for r in rows:
        print(
            f"{r['clip']:42s} {r['case']:15s} {r['ms_per_frame']:9.2f} {r['detect_ms_per_call']:7.2f} "
            f"{r['speedup_vs_today']:7.2f}x {r['iou_mean']:9.3f} {r['iou_min']:8.3f} {r['frames_iou_ge_0_9']:6.2f} "
            f"{r['presence_disagreements']:8d}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "detection.json"
    machine = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    out.write_text(json.dumps({"machine": machine, "quick": args.quick, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
