"""Helpers every benchmark shares."""

from __future__ import annotations

import resource
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def peak_rss_tree_mb() -> float:
    """peak_rss_mb plus the peak RSS (VmHWM) of each live child process: the MNN generator's engines run in
    worker processes (lipsync.stages.wav2lip_mnn), whose memory is not in this process's RSS. A sum of
    peaks, so at most a little above the peak of the sum; call it while the workers are still alive."""
    total = peak_rss_mb()
    children: list[str] = []
    for task in Path("/proc/self/task").glob("*/children"):
        try:
            children += task.read_text().split()
        except OSError:
            continue
    for pid in children:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024.0
        except OSError:  # gone meanwhile
            continue
    return total


def peak_rss_mb() -> float:
    """This process's own peak RSS in MiB.

    VmHWM belongs to the current address space, so it is the process's own peak; getrusage's ru_maxrss
    is carried across fork+exec on Linux, so a child started by a big parent would report the parent's.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
