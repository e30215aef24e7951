"""glibc malloc settings for a rendering process, applied once at the start of the ``lipsync`` command.

A render allocates a few large buffers per frame (a decoded picture, the frame handed to the encoder, the
solve's rectangles: about 1.2 MB each at 480p) on one thread and frees them on another. With glibc's
defaults those come from per-thread arenas whose heaps grow and are handed back to the kernel as frames
pass, so the same memory is faulted in again and again: about 50,000 minor page faults a Chaplin job
(148 frames), ~3 us each on this VM (a fresh 1.2 MB buffer costs 0.93 ms to fill against 0.06 ms for a
reused one). Two arenas, a fixed mmap threshold and a high trim threshold keep that memory in the
process instead. Measured in-process on this 2-core VM (Chaplin, 4 jobs per process after a warm-up,
3 processes per variant, alternating; medians of the main process):

=====================================  ==============  ===========  ============  =============
variant                                page faults     system CPU   all CPU       wall
=====================================  ==============  ===========  ============  =============
glibc defaults                         50,000-53,000   0.19-0.22 s  1.87-1.96 s   4.61-4.68 s
one arena                              3,900-7,400     0.08-0.12 s  1.79-1.91 s   4.58-4.65 s
two arenas + both thresholds (these)   340-1,500       0.08-0.10 s  1.77-1.88 s   4.55-4.60 s
=====================================  ==============  ===========  ============  =============

The working set is bounded by the render's frame budget, so peak RSS does not grow with the video;
what changes is that up to the trim threshold of freed memory stays with the process between jobs
instead of going back to the kernel.

A variable of glibc's own (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
GLIBC_TUNABLES) means the operator chose: then nothing is changed. Other C libraries (musl) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENAS = 2  # fewer faults than one arena (its heap still trims at the default threshold) and no slower
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: frames up to 4K come from the heap
TRIM_THRESHOLD = 256 * 1024 * 1024
OPERATOR_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def tune_malloc(environ: dict[str, str] | None = None) -> bool:
    """Apply the settings above once per process (before the render's threads start: arenas are made
    per thread on first use). Returns whether they are in force; False where glibc is not the C library
    or the operator set malloc variables."""
    global _applied
    if _applied is not None:
        return _applied
    env = os.environ if environ is None else environ
    chosen = [name for name in OPERATOR_VARIABLES if env.get(name)]
    if chosen or not sys.platform.startswith("linux"):
        _applied = False
        if chosen:
            log.debug("malloc left as configured (%s)", ", ".join(chosen))
        return False
    try:
        # The C library this interpreter runs on (its own symbols: no library search, which can spawn
        # ldconfig at every start of the command).
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        # gnu_get_libc_version exists only in glibc: musl has a mallopt that ignores everything.
        libc.gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        _applied = False
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, ARENAS), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ))  # fmt: skip
    _applied = ok
    log.debug("malloc tuned for rendering: %s", ok)
    return ok
