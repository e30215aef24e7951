"""Whole-process rows of benchmarks/throughput.py: ``lipsync run`` as a fresh process, and the peer (the
original Wav2Lip ``inference.py``, best case ``--box`` + hard paste) through ../shared/bench/peer_wav2lip.sh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_SCRIPT = REPO.parent / "shared" / "bench" / "peer_wav2lip.sh"
PEER_PATH_FILE = Path("/work/notes/peer_path.txt")
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("inf")


def whole_process(spec: dict, stats: Path, cache: Path | None = None) -> dict:
    """``lipsync run`` as a fresh process; ``cache``: the tracking cache's folder (None: the cache off)."""
    cmd = [sys.executable, "-c", "from lipsync.cli import main; main()", "run", "--video", spec["video"],
           "--audio", spec["audio"], "--out", str(Path(spec["work"]) / "whole.mp4"), "--no-enhance",
           "--no-progress", "--device", spec["device"], "--stats", str(stats)]  # fmt: skip
    env = {**ENV, "LIPSYNC_OFFLINE": "1", "LIPSYNC_FACE_BACKEND": spec["faces"], "LIPSYNC_WAV2LIP_CHECKPOINT": spec["wav2lip"],
           "LIPSYNC_MODELS_DIR": str(Path(spec["work"]) / "models")}  # fmt: skip
    if spec["faces"] == "insightface":
        env.update(LIPSYNC_DET_MODEL=spec["det_model"], LIPSYNC_REC_MODEL=spec["rec_model"])
    if cache is None:
        env["LIPSYNC_TRACK_CACHE"] = "false"
    else:
        env.update(LIPSYNC_TRACK_CACHE="true", LIPSYNC_TRACK_CACHE_DIR=str(cache))
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"row": "lipsync run", "error": proc.stderr.strip().splitlines()[-1:]}
    data = json.loads(stats.read_text())
    frames = data["frames"]
    hit = data["stage_seconds"].get("track", 0.0) == 0.0
    kind = "tracking cache off" if cache is None else ("cache hit" if hit else "cache filled")
    return {
        "row": f"lipsync run (whole process, {spec['faces']}, {kind})",
        "frames": frames,
        "wall_s": round(wall, 2),
        "fps": _rate(frames, wall),
        "stage_seconds": {k: round(v, 2) for k, v in data["stage_seconds"].items()},
    }


def peer(spec: dict, box: list[int], git: Path | None) -> dict:
    if git is None:
        return {
            "row": "peer",
            "skipped": f"no Wav2Lip checkout: pass --peer-git or write its path to {PEER_PATH_FILE}",
        }
    if not PEER_SCRIPT.exists():
        return {"row": "peer", "skipped": f"{PEER_SCRIPT} is missing"}
    out = Path(spec["work"]) / "peer.mp4"
    cmd = ["bash", str(PEER_SCRIPT), str(git), sys.executable, spec["wav2lip"], spec["video"], spec["audio"],
           " ".join(map(str, box)), str(out)]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    text = proc.stdout + proc.stderr
    m = re.search(r"peer wall ([\d.]+) s, peak RSS (\d+) KB", text)
    if proc.returncode != 0 or m is None or not out.exists():
        return {"row": "peer", "error": text.strip().splitlines()[-3:]}
    from lipsync.media import probe

    frames = probe(out).num_frames
    peer_wall = float(m.group(1))
    return {"row": "peer: Wav2Lip inference.py --box", "frames": frames, "wall_s": peer_wall,
            "fps": _rate(frames, peer_wall), "peak_rss_mb": round(int(m.group(2)) / 1024, 1),
            "script_wall_s": round(wall, 2), "box": box}  # fmt: skip


def peer_git(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    if PEER_PATH_FILE.exists():
        text = PEER_PATH_FILE.read_text().strip()
        return Path(text) if text and Path(text).exists() else None
    return None
