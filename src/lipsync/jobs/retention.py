"""Retention: finished jobs do not stay for ever. A background thread deletes, every ``interval_s``:

* stored results (``<results>/<job id>.mp4``, the files GET /jobs/{id}/result serves) older than
  ``result_ttl_s`` (by the file's modification time, i.e. when the job wrote it);
* the rows of jobs that reached a final status more than ``row_ttl_s`` ago, and any result they still have.

A TTL of 0 keeps that kind for ever. Queued and running jobs are never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lipsync.jobs.store import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    results_deleted: int
    rows_deleted: int


class RetentionSweeper:
    def __init__(self, store: JobStore, results_dir: Path, *, result_ttl_s: float, row_ttl_s: float,
                 interval_s: float) -> None:
        self.store = store
        self.results_dir = Path(results_dir)
        self.result_ttl_s = result_ttl_s
        self.row_ttl_s = row_ttl_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        results = rows = 0
        if self.row_ttl_s > 0:
            for job_id in self.store.delete_finished_before(now - self.row_ttl_s):
                rows += 1
                results += self._unlink(self.results_dir / f"{job_id}.mp4")
        if self.result_ttl_s > 0 and self.results_dir.is_dir():
            cutoff = now - self.result_ttl_s
            for path in self.results_dir.glob("*.mp4"):
                try:
                    old = path.stat().st_mtime < cutoff
                except FileNotFoundError:  # deleted meanwhile (DELETE /jobs/{id})
                    continue
                if old:
                    results += self._unlink(path)
        if results or rows:
            log.info("retention: deleted %d result file(s) and %d job row(s)", results, rows)
        return SweepReport(results, rows)

    @staticmethod
    def _unlink(path: Path) -> int:
        try:
            path.unlink()
            return 1
        except FileNotFoundError:
            return 0

    def start(self) -> None:
        if self.result_ttl_s <= 0 and self.row_ttl_s <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="lipsync-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # a failed sweep (disk, store) must not end the thread; the next one retries
                log.exception("retention sweep failed")
            self._stop.wait(self.interval_s)
