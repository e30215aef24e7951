"""The pipelined render engine against the serial renderer it replaced, on the same inputs, in one run.

serial: the whole-video tracker (a separate decode of the video), then lipsync.render.serial.render
(decode, crops, generation and compositing one after another; only encoding on a thread).
pipelined: LipSyncPipeline as jobs run it (streaming tracking inside the staged engine, one decode).
Both on the real Chaplin clip of ../shared/media with the dlib face backend, the tracking cache off, and
either a seeded random-weight Wav2Lip of the real architecture or a no-op generator double (which shows
what the engine does where the network is fast, as on a GPU). Models are loaded before the timed runs.

Usage: .venv/bin/python benchmarks/engine.py [--seconds S] [--generators wav2lip,identity] [--repeat N]
Prints a table and writes benchmarks/results/engine.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import wave
from pathlib import Path

from _common import RESULTS_DIR, peak_rss_tree_mb

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
sys.path.insert(0, str(REPO / "tests"))


def serial_run(pipe, request) -> float:
    from lipsync.faces import TrackingOptions, build_references
    from lipsync.faces.tracking import track_characters_batch
    from lipsync.media import iter_frames
    from lipsync.render import CharacterStats, PipelineStats, StageTimer, serial

    start = time.perf_counter()
    job = pipe._plan(request, pipe.get_vad())
    backend = pipe.get_face_backend()
    frames = itertools.islice(iter_frames(job.video, info=job.info), job.needed)
    refs = build_references(backend, list(request.characters))
    options = TrackingOptions.from_job(request.options)
    tracks = track_characters_batch(frames, backend, options=options, references=refs)
    stats = PipelineStats()
    for t in tracks:
        stats.characters[t.character_id] = CharacterStats(t.character_id, t.name)
    generator = pipe.get_generator()
    serial.render(job, request.options, request.output, tracks, generator, None, generator.batch_size,
                  StageTimer(), stats, lambda *a: None)  # fmt: skip
    return time.perf_counter() - start


def run_case(generator_name: str, seconds: float, work: Path, repeat: int) -> dict:
    import numpy as np

    from lipsync.config import Settings
    from lipsync.media import decode_audio
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
    from pipeline_fixtures import IdentityGenerator, write_random_wav2lip

    video = SHARED_MEDIA / "talking_chaplin_850x480_30fps.mp4"
    wav = decode_audio(SHARED_MEDIA / "speech_en_16k_stereo_8s.wav", 16000)[: int(seconds * 16000)]
    audio = work / "speech.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
    settings = Settings(
        device="cpu", offline=True, models_dir=work / "models", face_backend="dlib", track_cache=False,
        wav2lip_checkpoint=write_random_wav2lip(work / "wav2lip_gan.pth"),
    )  # fmt: skip
    generator = IdentityGenerator(16) if generator_name == "identity" else None
    pipe = LipSyncPipeline(settings, generator=generator)
    pipe.load_models(enhance=False)
    options = LipSyncOptions(enhance="off", wav2lip_batch_size=16)
    serial_times, piped_times = [], []
    for k in range(repeat):  # alternated, so a change in the machine's load hits both; best of each
        pair = ("serial", "pipelined") if k % 2 == 0 else ("pipelined", "serial")
        for which in pair:
            if which == "serial":
                serial_times.append(serial_run(pipe, LipSyncRequest(video, audio, work / "serial.mp4", (), options)))
                continue
            start = time.perf_counter()
            result = pipe(LipSyncRequest(video, audio, work / "piped.mp4", (), options))
            piped_times.append(time.perf_counter() - start)
    serial_s, piped_s = min(serial_times), min(piped_times)
    frames = result.stats.frames
    rows = {"serial_s": round(serial_s, 2), "pipelined_s": round(piped_s, 2), "frames": frames,
            "serial_fps": round(frames / serial_s, 2), "pipelined_fps": round(frames / piped_s, 2),
            "speedup": round(serial_s / piped_s, 2),
            "pipelined_stage_busy_s": {k: round(v, 2) for k, v in result.stats.stage_seconds.items()}}  # fmt: skip
    return {"generator": generator_name, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=7.0, help="seconds of speech (output length)")
    parser.add_argument("--generators", default="wav2lip,identity")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each renderer (alternated; best kept)")
    args = parser.parse_args()
    cases = []
    for name in args.generators.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cases.append(run_case(name, args.seconds, Path(tmp), args.repeat))
    print("| generator | frames | serial s | pipelined s | serial fps | pipelined fps | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        print(f"| {c['generator']} | {c['frames']} | {c['serial_s']} | {c['pipelined_s']} | {c['serial_fps']} | "
              f"{c['pipelined_fps']} | {c['speedup']}x |")  # fmt: skip
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "note": "2 shared cores: other work ran at the same time"},
        "video": "talking_chaplin_850x480_30fps.mp4", "seconds": args.seconds, "repeat": args.repeat,
        "cases": cases,
        "peak_rss_mb": round(peak_rss_tree_mb(), 1),
    }  # fmt: skip
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "engine.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
