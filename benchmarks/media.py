"""Media I/O speed and memory: decode / encode fps at 480p, 720p, 1080p, and peak RSS of a streaming
decode + re-encode of a 1-minute vs a 10-minute clip.

Speed rows (synthetic H.264 clips written first with our VideoWriter, preset ultrafast):
  * decode: ``iter_frames`` (demux + H.264 decode + BGR conversion), frames/s and realtime factor;
  * reader-reverse: ``FrameReader`` read back to front (the pingpong case: a seek per block);
  * encode: ``VideoWriter`` at crf 18 with x264 medium, veryfast, the per-device default (veryfast with
    ``encoders.LIGHT_MOTION``) and ultrafast.
Realtime factor = media seconds processed / wall seconds (25 fps clips).

Memory rows: each clip length runs decode -> VideoWriter in its own subprocess, which reports its own
peak RSS (getrusage ru_maxrss). Streaming holds one decoded frame plus the codecs' fixed buffers, so the
10-minute peak must be within 1.2x of the 1-minute peak; the script prints whether that holds. The RSS
clips are small (320x180) so the 10-minute case finishes in a couple of minutes on 2 cores; the audio
track is not part of this measurement (decode_audio returns the whole track as an array by contract:
64 KB per second at 16 kHz float32).

Usage:  .venv/bin/python benchmarks/media.py [--quick]      (writes benchmarks/results/media.json)
--quick: fewer frames per speed row and 12 s vs 120 s clips for the memory check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from _common import peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results" / "media.json"
FPS = Fraction(25)
SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
RSS_SIZE = (320, 180)
RSS_LIMIT = 1.2


def _frames(width: int, height: int, count: int):
    """Moving content (a scrolling gradient and a bouncing block), so the encoder has real work."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), ((xx + yy) % 256)], axis=-1
    ).astype(np.uint8)
    box = max(8, height // 6)
    for i in range(count):
        frame = np.roll(base, shift=(i * 3) % width, axis=1)
        y = (i * 5) % max(1, height - box)
        x = (i * 7) % max(1, width - box)
        frame[y : y + box, x : x + box] = (255 - (i % 256), 40, 200)
        yield frame


def make_clip(path: Path, width: int, height: int, count: int, preset: str = "ultrafast") -> Path:
    from lipsync.media import VideoWriter

    with VideoWriter(path, width, height, FPS, crf=23, preset=preset) as writer:
        for frame in _frames(width, height, count):
            writer.write(frame)
    return path


def _row(kind: str, res: str, frames: int, seconds: float, **extra) -> dict:
    fps = frames / seconds if seconds > 0 else float("inf")
    return {
        "case": kind,
        "resolution": res,
        "frames": frames,
        "seconds": round(seconds, 3),
        "fps": round(fps, 1),
        "realtime": round(fps / float(FPS), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **extra,
    }


def speed_child(res: str, count: int, workdir: Path) -> list[dict]:
    """Run in a fresh process per resolution, so each row's peak RSS is that resolution's own."""
    from lipsync.media import FrameReader, VideoWriter, iter_frames, probe
    from lipsync.media.encoders import LIGHT_MOTION

    rows = []
    width, height = SIZES[res]
    clip = make_clip(workdir / f"{res}.mp4", width, height, count)
    info = probe(clip)
    start = time.perf_counter()
    n = sum(1 for _ in iter_frames(clip, info=info))
    rows.append(_row("decode", res, n, time.perf_counter() - start))

    start = time.perf_counter()
    with FrameReader(clip, info=info, block=16) as reader:
        for i in range(len(reader) - 1, -1, -1):
            reader.get(i)
        seeks = reader.seeks
    rows.append(_row("reader-reverse", res, len(reader), time.perf_counter() - start, seeks=seeks))

    # Frames are synthesised on the fly (no list of frames inflating RSS); their cost is timed
    # separately and subtracted so the row is the encoder alone.
    start = time.perf_counter()
    for _ in _frames(width, height, count):
        pass
    synth = time.perf_counter() - start
    for name, preset, params in (("medium", "medium", ""), ("veryfast", "veryfast", ""),
                                 ("default", "veryfast", LIGHT_MOTION), ("ultrafast", "ultrafast", "")):  # fmt: skip
        start = time.perf_counter()
        with VideoWriter(
            workdir / f"{res}-{name}.mp4", width, height, FPS, crf=18, preset=preset, x264_params=params
        ) as writer:
            for frame in _frames(width, height, count):
                writer.write(frame)
        elapsed = max(1e-6, time.perf_counter() - start - synth)
        rows.append(_row(f"encode-{name}", res, writer.frames_written, elapsed))
    return rows


def speed_rows(workdir: Path, count: int) -> list[dict]:
    rows = []
    for res in SIZES:
        cmd = [sys.executable, __file__, "--speed-child", res, str(count), str(workdir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.extend(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def rss_child(clip: Path, out: Path) -> dict:
    """Run in a fresh process: decode ``clip`` and re-encode it, reporting this process's peak RSS."""
    from lipsync.media import VideoWriter, iter_frames, probe

    baseline = peak_rss_mb()
    info = probe(clip)
    start = time.perf_counter()
    with VideoWriter(out, info.width, info.height, info.fps, crf=23, preset="ultrafast") as writer:
        for frame in iter_frames(clip, info=info):
            writer.write(frame)
    seconds = time.perf_counter() - start
    return {
        "frames": writer.frames_written,
        "media_s": round(info.video_duration, 1),
        "seconds": round(seconds, 2),
        "fps": round(writer.frames_written / seconds, 1),
        "realtime": round(info.video_duration / seconds, 2),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def rss_rows(workdir: Path, durations: list[float]) -> list[dict]:
    rows = []
    for duration in durations:
        count = round(duration * float(FPS))
        clip = make_clip(workdir / f"rss-{duration:g}s.mp4", *RSS_SIZE, count)
        cmd = [
            sys.executable,
            __file__,
            "--rss-child",
            str(clip),
            str(workdir / f"rss-{duration:g}s-out.mp4"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(case="decode+encode", resolution=f"{RSS_SIZE[0]}x{RSS_SIZE[1]}", clip_s=duration)
        rows.append(result)
        clip.unlink(missing_ok=True)
        (workdir / f"rss-{duration:g}s-out.mp4").unlink(missing_ok=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, shorter memory clips")
    parser.add_argument("--rss-child", nargs=2, metavar=("CLIP", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--speed-child", nargs=3, metavar=("RES", "COUNT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        res, n, folder = args.speed_child
        print(json.dumps(speed_child(res, int(n), Path(folder))))
        return
    if args.rss_child:
        print(json.dumps(rss_child(Path(args.rss_child[0]), Path(args.rss_child[1]))))
        return

    count = 25 if args.quick else 100
    durations = [12.0, 120.0] if args.quick else [60.0, 600.0]
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-media-") as tmp:
        workdir = Path(tmp)
        memory = rss_rows(workdir, durations)
        speed = speed_rows(workdir, count)

    print(f"\nmedia I/O speed ({count} frames per row, synthetic 25 fps H.264; {os.cpu_count()} CPUs)")
    print(f"{'case':<17}{'res':>6}{'frames':>8}{'fps':>9}{'realtime':>10}{'peak RSS MB':>13}")
    for r in speed:
        print(
            f"{r['case']:<17}{r['resolution']:>6}{r['frames']:>8}{r['fps']:>9.1f}{r['realtime']:>9.2f}x{r['peak_rss_mb']:>13.1f}"
        )

    print(f"\ndecode + re-encode, each in its own process ({RSS_SIZE[0]}x{RSS_SIZE[1]}, ultrafast)")
    print(f"{'clip':>8}{'frames':>8}{'fps':>9}{'realtime':>10}{'baseline MB':>13}{'peak RSS MB':>13}")
    for r in memory:
        print(
            f"{r['clip_s']:>7g}s{r['frames']:>8}{r['fps']:>9.1f}{r['realtime']:>9.2f}x"
            f"{r['baseline_rss_mb']:>13.1f}{r['peak_rss_mb']:>13.1f}"
        )
    ratio = memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
    holds = ratio <= RSS_LIMIT
    print(
        f"peak RSS {memory[1]['clip_s']:g}s / {memory[0]['clip_s']:g}s = {ratio:.3f} "
        f"(limit {RSS_LIMIT}): {'HOLDS' if holds else 'DOES NOT HOLD'}"
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "media",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "speed": speed,
        "memory": memory,
        "rss_ratio": round(ratio, 4),
        "rss_limit": RSS_LIMIT,
        "rss_holds": holds,
    }
    RESULTS.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
