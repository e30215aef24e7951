"""Dubbing: voice activity speed and accuracy, and the stems' mix memory.

Rows:
  * vad-<detector>: seconds of 16 kHz speech scored per wall second (the shared 20 s speech sample, looped
    to 60 s), silero-vad through onnxruntime on one thread, and the energy fallback;
  * boundaries-<detector>: on that sample with 0.5-2 s silences inserted mid-word at 4 places (as
    tests/test_vad.py), the largest and mean distance in ms between a found speech edge and the true one;
  * mix-rss: peak RSS of mixing two 48 kHz stereo stems through ``MixedAudioSource`` (sum + look-ahead
    limiter), each length in its own subprocess: streaming means the long mix must stay within 1.2x of
    the short one.

Usage:  .venv/bin/python benchmarks/dubbing.py [--quick]    (writes benchmarks/results/dubbing.json)
--quick: 12 s vs 120 s stems for the memory check (default 60 s vs 600 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from _common import RESULTS_DIR, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "media" / "speech_16k_mono_19.8s_long.wav"
RATE = 16000


def _vad_rows() -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from lipsync.audio.vad import EnergyVAD, detect_speech, load_detector
    from lipsync.media import decode_audio
    from lipsync.options import LipSyncOptions
    from test_vad import CUTS, GAPS, _boundary_errors, speech_with_gaps

    wav = decode_audio(SPEECH, RATE)
    long = np.tile(wav, 3)
    o = LipSyncOptions()
    kw = {"threshold": o.vad_threshold, "min_speech_s": o.vad_min_speech_ms / 1000,
          "min_silence_s": o.vad_min_silence_ms / 1000}  # fmt: skip
    rows = []
    gapped, silences = speech_with_gaps(CUTS, GAPS)
    for detector in (load_detector(), EnergyVAD()):
        start = time.perf_counter()
        detect_speech(detector, long, **kw)
        wall = time.perf_counter() - start
        rows.append({"row": f"vad-{detector.name}", "audio_s": len(long) / RATE, "wall_s": round(wall, 3),
                     "realtime_x": round(len(long) / RATE / wall, 1)})  # fmt: skip
        errors = np.array(_boundary_errors(detect_speech(detector, gapped, **kw), silences)) * 1000
        rows.append({"row": f"boundaries-{detector.name}", "edges": len(errors),
                     "max_ms": round(float(errors.max()), 1), "mean_ms": round(float(errors.mean()), 1)})  # fmt: skip
    return rows


def _write_stem(path: Path, seconds: float, freq: float) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        block = 48000 * 10
        for start in range(0, round(seconds * 48000), block):
            n = min(block, round(seconds * 48000) - start)
            t = (start + np.arange(n)) / 48000
            tone = 0.9 * np.sin(2 * np.pi * freq * t)
            w.writeframes((np.stack([tone, tone], 1) * 32767).astype("<i2").tobytes())


def _mix_child(a: str, b: str) -> None:
    from lipsync.media.mix import MixedAudioSource

    peak, total = 0.0, 0
    with MixedAudioSource.open([(Path(a), "a"), (Path(b), "b")], 48000) as mix:
        while True:
            block = mix.read(1024)
            if not block.shape[1]:
                break
            peak, total = max(peak, float(np.abs(block).max())), total + block.shape[1]
    print(json.dumps({"rss_mb": peak_rss_mb(), "samples": total, "peak": peak}))


def _mix_rows(lengths: list[float]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            a, b = Path(tmp) / f"a{seconds}.wav", Path(tmp) / f"b{seconds}.wav"
            _write_stem(a, seconds, 220.0)
            _write_stem(b, seconds * 0.8, 330.0)
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--mix-child", str(a), str(b)], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            child = json.loads(out.strip().splitlines()[-1])
            rows.append({"row": "mix-rss", "stem_s": seconds, "rss_mb": round(child["rss_mb"], 1),
                         "peak": round(child["peak"], 4), "wall_s": round(time.perf_counter() - start, 2),
                         "realtime_x": round(seconds / (time.perf_counter() - start), 1)})  # fmt: skip
            a.unlink()
            b.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mix-child", nargs=2)
    args = parser.parse_args()
    if args.mix_child:
        _mix_child(*args.mix_child)
        return
    rows = _vad_rows() + _mix_rows([12.0, 120.0] if args.quick else [60.0, 600.0])
    rss = [r["rss_mb"] for r in rows if r["row"] == "mix-rss"]
    ratio = rss[1] / rss[0]
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    print(f"mix peak RSS ratio long/short: {ratio:.2f} ({'ok' if ratio <= 1.2 else 'OVER'} the 1.2 limit)")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = {"machine": platform.platform(), "python": platform.python_version(), "quick": args.quick,
           "rows": rows, "mix_rss_ratio": round(ratio, 3)}  # fmt: skip
    (RESULTS_DIR / "dubbing.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
