"""lipsync.malloc_tuning: glibc keeps a render's per-frame buffers instead of faulting them in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lipsync import malloc_tuning

# Decode a real clip on one thread and encode it on another, as the render does, three times; print the
# minor page faults of the last two passes (the first one grows the heap whatever the settings).
_SCENARIO = """
import queue, resource, sys, threading
tuned = sys.argv[1] == "tuned"
if tuned:
    from lipsync.malloc_tuning import tune_malloc
    assert tune_malloc()
from lipsync.media import VideoWriter, iter_frames, probe
video, out = sys.argv[2], sys.argv[3]
info = probe(video)
faults = []
for _ in range(3):
    q = queue.Queue(maxsize=8)
    def produce():
        for frame in iter_frames(video, info=info):
            q.put(frame)
        q.put(None)
    def consume():
        with VideoWriter(out, info.display_width, info.display_height, info.fps, preset="ultrafast",
                         threads=1) as writer:
            while (frame := q.get()) is not None:
                writer.write(frame)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_malloc_keeps_a_renders_frame_buffers_instead_of_faulting_them_in_again(tmp_path, shared_media):
    video = shared_media("talking_chaplin_850x480_30fps.mp4")
    env = {k: v for k, v in os.environ.items() if k not in malloc_tuning.OPERATOR_VARIABLES}
    faults = {}
    for mode in ("default", "tuned"):
        proc = subprocess.run([sys.executable, "-c", _SCENARIO, mode, str(video), str(tmp_path / f"{mode}.mp4")],
                              capture_output=True, text=True, env=env, timeout=300, check=True)  # fmt: skip
        faults[mode] = int(proc.stdout.split()[-1])
    # Measured: 9,000-23,000 faults with glibc's defaults against 180-5,900 tuned.
    assert faults["tuned"] * 2 < faults["default"], faults


def test_an_operators_malloc_variables_are_left_alone(monkeypatch):
    monkeypatch.setattr(malloc_tuning, "_applied", None)
    assert malloc_tuning.tune_malloc({"MALLOC_ARENA_MAX": "4"}) is False
    monkeypatch.setattr(malloc_tuning, "_applied", None)
    assert malloc_tuning.tune_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is False


def test_the_lipsync_command_tunes_malloc_before_anything_else():
    code = (
        "import sys; from lipsync import malloc_tuning; from lipsync.cli import main; "
        "sys.argv = ['lipsync', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(malloc_tuning._applied)"
    )
    env = {k: v for k, v in os.environ.items() if k not in malloc_tuning.OPERATOR_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == ("True" if sys.platform.startswith("linux") else "False")
