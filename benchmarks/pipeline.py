"""The whole lip-sync pipeline, end to end: fps per stage, realtime factor and peak RSS.

Cases:

* ``chaplin``: ../shared/media/talking_chaplin_850x480_30fps.mp4 (7 s) lip-synced to 8 s of speech
  (../shared/media/speech_en_16k_stereo_8s.wav), crossfade loop, the most prominent face;
* ``synthetic720``: a generated 1280x720 25 fps talking-head clip (a real portrait, panning and zooming,
  its mouth region stretched in time with the syllables), 60 s (``--quick``: 12 s), with as much
  synthetic speech.

Each runs without and with GFPGAN enhancement. Enhancement costs seconds per face on a CPU, so CPU rows
with enhancement process only the first ``--enhance-seconds`` of the audio (the row says how many frames).
Faces: the dlib backend (offline, real detection and recognition). Networks: the real Wav2Lip and GFPGAN
v1.4 architectures with seeded random weights (speed does not depend on the weights; the real files cannot
be downloaded here). CUDA rows are added when torch sees a GPU.

Every row runs in its own subprocess, so its peak RSS (VmHWM) is its own.

Usage: .venv/bin/python benchmarks/pipeline.py [--quick] [--enhance-seconds S] [--cases chaplin,synthetic720]
Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_tree_mb

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "pipeline.json"
SHARED_MEDIA = REPO.parent / "shared" / "media"
sys.path.insert(0, str(REPO / "tests"))  # the seeded checkpoint writers and clip builders live with the tests

STAGES = ("track", "decode", "prepare_faces", "generate", "composite", "enhance", "encode")


# --- inputs ---------------------------------------------------------------------------------------------


def talking_clip(path: Path, seconds: float, width: int = 1280, height: int = 720, fps: int = 25) -> Path:
    """A 720p talking-head clip from a real portrait: slow pan and zoom, the lower face stretched in time."""
    import cv2
    import numpy as np

    from pipeline_fixtures import write_video

    photo = cv2.imread(str(SHARED_MEDIA / "obama.jpg"))
    # Face in obama.jpg: about x 370..612, y 145..428; mouth rows about 350..430.
    n = round(seconds * fps)
    base_scale = (height * 0.55) / (428 - 145)  # face about 55 % of the frame height

    def frame(i: int) -> np.ndarray:
        t = i / fps
        img = photo.copy()
        # "Talking": stretch the band from the upper lip to the chin by up to 12 %, at a syllable rate.
        open_ = 0.12 * max(0.0, math.sin(2 * math.pi * 3.3 * t)) ** 2
        y0, y1 = 350, 450
        band = img[y0:y1]
        stretched = cv2.resize(band, (band.shape[1], round((y1 - y0) * (1 + open_))))
        img[y0:y1] = stretched[: y1 - y0]
        scale = base_scale * (1.0 + 0.05 * math.sin(2 * math.pi * t / 20))
        cx = 491 + 40 * math.sin(2 * math.pi * t / 15)
        cy = 300 + 20 * math.cos(2 * math.pi * t / 11)
        m = np.array([[scale, 0, width / 2 - scale * cx], [0, scale, height / 2 - scale * cy]], np.float32)
        return cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    return write_video(path, frame, n, fps)


def prepare_inputs(work: Path, quick: bool, cases: list[str], synthetic_seconds: float | None = None) -> dict:
    from pipeline_fixtures import write_random_gfpgan, write_random_wav2lip, write_speechlike_wav

    t0 = time.perf_counter()
    out: dict = {
        "wav2lip": str(write_random_wav2lip(work / "wav2lip_gan.pth", seed=0)),
        "gfpgan": str(write_random_gfpgan(work / "GFPGANv1.4.pth", seed=0)),
        "cases": {},
    }
    if "chaplin" in cases:
        out["cases"]["chaplin"] = {
            "video": str(SHARED_MEDIA / "talking_chaplin_850x480_30fps.mp4"),
            "audio": str(SHARED_MEDIA / "speech_en_16k_stereo_8s.wav"),
        }
    if "synthetic720" in cases:
        seconds = synthetic_seconds or (12.0 if quick else 60.0)
        out["cases"]["synthetic720"] = {
            "video": str(talking_clip(work / "talking720.mp4", seconds)),
            "audio": str(write_speechlike_wav(work / "speech720.wav", seconds)),
        }
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


# --- one row, in a subprocess ---------------------------------------------------------------------------


def run_case(spec: dict) -> dict:
    """Child process: run one pipeline configuration, report its stats and this process's peak RSS."""
    import torch

    from lipsync.config import Settings
    from lipsync.media import decode_audio
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest

    work = Path(spec["work"])
    audio = Path(spec["audio"])
    if spec.get("audio_seconds"):
        # Trim the speech (enhanced CPU rows): the plan follows the audio, so fewer frames are processed.
        import wave

        import numpy as np

        wav = decode_audio(audio, 16000)[: int(spec["audio_seconds"] * 16000)]
        audio = work / f"trim_{spec['name']}.wav"
        with wave.open(str(audio), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
    settings = Settings(
        device=spec["device"],
        offline=True,
        models_dir=work / "models",
        wav2lip_checkpoint=spec["wav2lip"],
        gfpgan_checkpoint=spec["gfpgan"],
        face_backend="dlib",
    )
    pipe = LipSyncPipeline(settings)
    load_start = time.perf_counter()
    pipe.load_models(enhance=spec["enhance"])
    load_s = time.perf_counter() - load_start
    request = LipSyncRequest(
        Path(spec["video"]),
        audio,
        work / f"out_{spec['name']}.mp4",
        options=LipSyncOptions(enhance="on" if spec["enhance"] else "off", loop_mode="crossfade"),
    )
    result = pipe(request)
    stats = result.stats.to_dict()
    peak_mb = peak_rss_tree_mb()
    row = {
        "case": spec["case"],
        "device": spec["device"],
        "gpu": torch.cuda.get_device_name(0) if spec["device"] == "cuda" else None,
        "enhance": spec["enhance"],
        "frames": stats["frames"],
        "media_s": round(stats["duration_s"], 3),
        "wall_s": round(stats["wall_seconds"], 3),
        "fps": round(stats["frames"] / stats["wall_seconds"], 3),
        "realtime_factor": round(stats["realtime_factor"], 4),
        "stage_fps": stats["stage_fps"],
        "stage_seconds": stats["stage_seconds"],
        "model_load_s": round(load_s, 2),
        "batch_size": stats["batch_size"],
        "poisson": stats["poisson"],
        "feather": stats["feather"],
        "faces_synced": stats["faces_synced"],
        "peak_rss_mb": round(peak_mb, 1),
        "torch_threads": torch.get_num_threads(),
    }
    return row


def _child(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--run-case", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {
            "case": spec["case"],
            "device": spec["device"],
            "enhance": spec["enhance"],
            "error": " | ".join(tail),
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- table ----------------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    head = ["case", "device", "enh", "frames", "media s", "wall s", "fps", "x realtime", "peak RSS MB"]
    head += [f"{s} fps" for s in STAGES]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["case"], r["device"], str(r["enhance"]), "ERROR: " + r["error"][:80]])
            continue
        sf = r["stage_fps"]
        lines.append(
            [r["case"], r["device"], "yes" if r["enhance"] else "no", str(r["frames"]), f"{r['media_s']:.2f}",
             f"{r['wall_s']:.1f}", f"{r['fps']:.2f}", f"{r['realtime_factor']:.3f}", f"{r['peak_rss_mb']:.0f}"]
            + [f"{sf[s]:.1f}" if s in sf else "-" for s in STAGES]
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="12 s synthetic clip instead of 60 s")
    parser.add_argument("--enhance-seconds", type=float, default=None,
                        help="audio seconds for enhanced CPU rows (default 0.4 quick, 2.0 full)")  # fmt: skip
    parser.add_argument("--cases", default="chaplin,synthetic720")
    parser.add_argument("--no-enhance-rows", action="store_true", help="skip the enhanced rows")
    parser.add_argument("--synthetic-seconds", type=float, default=None, help="length of the 720p clip")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        print(json.dumps(run_case(json.loads(args.run_case))))
        return

    import torch

    cases = [c for c in args.cases.split(",") if c]
    if not SHARED_MEDIA.exists():
        sys.exit(f"needs {SHARED_MEDIA} (the shared test media)")
    enhance_seconds = args.enhance_seconds or (0.4 if args.quick else 2.0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        work = Path(tmp)
        inputs = prepare_inputs(work, args.quick, cases, args.synthetic_seconds)
        for case, media in inputs["cases"].items():
            for device in devices:
                for enhance in (False, True) if not args.no_enhance_rows else (False,):
                    spec = {
                        "case": case, "device": device, "enhance": enhance, "work": str(work),
                        "name": f"{case}_{device}_{int(enhance)}", "wav2lip": inputs["wav2lip"],
                        "gfpgan": inputs["gfpgan"], **media,
                    }  # fmt: skip
                    if enhance and device == "cpu":
                        spec["audio_seconds"] = enhance_seconds
                    print(f"running {spec['name']} ...", file=sys.stderr, flush=True)
                    rows.append(_child(spec))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "quick": args.quick,
        "synthetic_seconds": args.synthetic_seconds or (12.0 if args.quick else 60.0),
        "enhance_seconds_cpu": enhance_seconds,
        "machine": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "weights": "seeded random, real architectures",
        "face_backend": "dlib",
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
