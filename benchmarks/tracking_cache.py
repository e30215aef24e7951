"""The tracking cache's second-run speed-up: one video lip-synced twice (two dubs of the same clip).

The first run tracks (streaming, inside the pipelined render) and stores the tracks; the second finds
them in the cache (keyed by the video's content, the tracking settings and the backend) and skips
detection altogether. Both runs are whole ``LipSyncPipeline`` calls on the real Chaplin clip of
../shared/media with the dlib face backend and a seeded random-weight Wav2Lip of the real architecture
(speed does not depend on the weights). Models are loaded before the timed runs.

Usage: .venv/bin/python benchmarks/tracking_cache.py [--seconds S] [--generators wav2lip,identity]
Prints a table and writes benchmarks/results/tracking_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=7.0, help="seconds of speech (output length)")
    parser.add_argument("--generators", default="wav2lip,identity",
                        help="comma-separated: wav2lip (random weights, real layout), identity (a no-op double: "
                        "shows the cache's effect where the network is fast, as on a GPU)")  # fmt: skip
    args = parser.parse_args()
    cases = [run_case(name, args.seconds) for name in args.generators.split(",")]
    print("| generator | run | wall s | frames | fps | track s (busy) | cache lookup s | stages busy, summed s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        for r in case["rows"]:
            print(f"| {case['generator']} | {r['run']} | {r['wall_s']} | {r['frames']} | {r['fps']} | "
                  f"{r['track_s']} | {r['cache_s']} | {r['busy_sum_s']} |")  # fmt: skip
    for case in cases:
        print(f"{case['generator']}: the second run is {case['speedup']:.2f}x faster")
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "note": "2 shared cores: other work ran at the same time"},
        "video": "talking_chaplin_850x480_30fps.mp4", "seconds": args.seconds, "cases": cases,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }  # fmt: skip
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "tracking_cache.json").write_text(json.dumps(report, indent=1) + "\n")


def run_case(generator_name: str, seconds: float) -> dict:
    """Two runs of one pipeline on the same video and audio, with an empty cache before the first."""
    import numpy as np

    from lipsync.config import Settings
    from lipsync.media import decode_audio
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
    from pipeline_fixtures import IdentityGenerator, write_random_wav2lip

    video = SHARED_MEDIA / "talking_chaplin_850x480_30fps.mp4"
    speech = SHARED_MEDIA / "speech_en_16k_stereo_8s.wav"
    if not video.exists():
        sys.exit(f"needs {video}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import wave

        wav = decode_audio(speech, 16000)[: int(seconds * 16000)]
        audio = work / "speech.wav"
        with wave.open(str(audio), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
        settings = Settings(
            device="cpu", offline=True, models_dir=work / "models", face_backend="dlib",
            wav2lip_checkpoint=write_random_wav2lip(work / "wav2lip_gan.pth"),
            track_cache=True, track_cache_dir=work / "track-cache",
        )  # fmt: skip
        generator = IdentityGenerator(16) if generator_name == "identity" else None
        pipe = LipSyncPipeline(settings, generator=generator)
        pipe.load_models(enhance=False)
        options = LipSyncOptions(enhance="off")
        rows = []
        for run in ("first (tracks)", "second (cache hit)"):
            start = time.perf_counter()
            result = pipe(LipSyncRequest(video, audio, work / f"out{len(rows)}.mp4", (), options))
            wall = time.perf_counter() - start
            stages = result.stats.stage_seconds
            rows.append({
                "run": run, "wall_s": round(wall, 2), "frames": result.stats.frames,
                "fps": round(result.stats.frames / wall, 2), "track_s": round(stages.get("track", 0.0), 2),
                "cache_s": round(stages.get("track_cache", 0.0), 3),
                # Seconds the stages were busy, summed: above the wall time, the stages overlapped.
                "busy_sum_s": round(sum(v for k, v in stages.items() if k not in ("load_models", "track_cache")), 2),
                "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
            })  # fmt: skip
    return {"generator": generator_name, "rows": rows, "speedup": round(rows[0]["wall_s"] / rows[1]["wall_s"], 2)}


if __name__ == "__main__":
    main()
