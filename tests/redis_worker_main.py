"""TEST-ONLY worker process: ``run_worker`` (the code behind ``lipsync worker``) on the fake engine.

Shaped by env, besides api_fixtures.FakeEngine's LIPSYNC_TEST_FAKE_* variables:
LIPSYNC_TEST_FAKE_STEPS (progress reports per job), LIPSYNC_TEST_POISON_SIZE (a job whose input video
has this many bytes SIGKILLs its worker: the poison job), LIPSYNC_TEST_WORKER_ID, LIPSYNC_TEST_READY_FILE.
Usage: python redis_worker_main.py METRICS_PORT
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from api_fixtures import FakeEngine


class ClusterFakeEngine(FakeEngine):
    def _work(self, video: Path, progress, stage: str) -> float:
        poison = os.environ.get("LIPSYNC_TEST_POISON_SIZE")
        if poison and video.stat().st_size == int(poison):
            progress(stage, 0, 1)
            os.kill(os.getpid(), signal.SIGKILL)
        from lipsync.media import probe

        info = probe(video)
        steps = int(os.environ.get("LIPSYNC_TEST_FAKE_STEPS", "5"))
        progress(stage, 0, steps)
        for i in range(steps):
            time.sleep(self.seconds / steps)
            progress(stage, i + 1, steps)
        return float(info.duration)


def main() -> None:
    from lipsync.cli.worker import run_worker
    from lipsync.config import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready = os.environ.get("LIPSYNC_TEST_READY_FILE")
    run_worker(settings, pipeline_factory=ClusterFakeEngine, metrics_port=int(sys.argv[1]),
               worker_id=os.environ.get("LIPSYNC_TEST_WORKER_ID"),
               on_ready=(lambda: Path(ready).write_text("ok")) if ready else None)


if __name__ == "__main__":
    main()
