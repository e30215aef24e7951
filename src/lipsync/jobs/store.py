"""SQLite job store: jobs survive a restart.

One connection guarded by a lock (the store is shared by the API's event loop and the worker threads;
every statement is short, so a lock is simpler and faster than a connection per thread). WAL mode keeps
readers from blocking the writer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lipsync.errors import JobNotFound, QueueFull
from lipsync.jobs.models import FINAL_STATUSES, MAX_ATTEMPTS, JobFailure, JobRecord, StageProgress, new_job_id

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    stage TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    webhook_url TEXT,
    webhook_status TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
"""

# Columns added after the first release: (name, SQL type). Older databases get them on open.
_ADDED_COLUMNS = (("webhook_status", "TEXT"),)

# Every move to a final status marks the job's webhook as owed, in the same statement, so no path to a
# final state (a worker, a cancel, crash recovery) can forget it; WebhookSender claims and settles it.
_OWE_WEBHOOK = "webhook_status=CASE WHEN COALESCE(webhook_url, '') != '' THEN 'pending' END"


def _row_to_record(row: sqlite3.Row) -> JobRecord:
    progress = {k: StageProgress(int(v[0]), int(v[1])) for k, v in json.loads(row["progress"]).items()}
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        params=json.loads(row["params"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        stage=row["stage"],
        progress=progress,
        result=json.loads(row["result"]) if row["result"] else None,
        error=JobFailure.from_dict(json.loads(row["error"])) if row["error"] else None,
        webhook_url=row["webhook_url"],
    )


class JobStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes -------------------------------------------------------------------------------------

    def create(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        webhook_url: str | None = None,
        max_queued: int | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Insert a queued job. With ``max_queued``, refuse (QueueFull) when that many already wait;
        the count and the insert happen under one lock so concurrent submits cannot overshoot."""
        now = time.time()
        job_id = job_id or new_job_id()
        with self._lock:
            if max_queued is not None:
                (queued,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status='queued'").fetchone()
                if queued >= max_queued:
                    raise QueueFull(
                        f"the job queue is full ({queued} jobs waiting); retry later",
                    )
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
            self._db.execute(
                "INSERT INTO jobs (id, seq, kind, status, params, created_at, updated_at, webhook_url)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, seq, kind, json.dumps(params), now, now, webhook_url),
            )
        return self.get(job_id)

    def mark_running(self, job_id: str) -> JobRecord | None:
        """queued -> running (attempts + 1). None when the job is no longer queued (cancelled meanwhile)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status='running', attempts=attempts+1, started_at=?, updated_at=?"
                " WHERE id=? AND status='queued'",
                (now, now, job_id),
            )
            if cur.rowcount == 0:
                return None
        return self.get(job_id)

    def set_progress(self, job_id: str, stage: str, done: int, total: int) -> None:
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT progress FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return
            progress = json.loads(row["progress"])
            progress[stage] = [int(done), int(total)]
            self._db.execute(
                "UPDATE jobs SET stage=?, progress=?, updated_at=? WHERE id=?",
                (stage, json.dumps(progress), now, job_id),
            )

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: JobFailure | None = None,
        only_if: Iterable[str] = ("queued", "running"),
    ) -> JobRecord | None:
        """Move a job to a final status. Returns None (and changes nothing) when it already was final."""
        now = time.time()
        allowed = tuple(only_if)
        marks = ",".join("?" * len(allowed))
        with self._lock:
            cur = self._db.execute(
                f"UPDATE jobs SET status=?, result=?, error=?, finished_at=?, updated_at=?, {_OWE_WEBHOOK}"
                f" WHERE id=? AND status IN ({marks})",
                (
                    status,
                    json.dumps(result) if result is not None else None,
                    json.dumps(error.to_dict()) if error is not None else None,
                    now,
                    now,
                    job_id,
                    *allowed,
                ),
            )
            if cur.rowcount == 0:
                return None
        return self.get(job_id)

    def requeue(self, job_id: str, *, refund_attempt: bool = False) -> None:
        """running -> queued (a graceful shutdown interrupted it); the attempt is refunded when asked."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status='queued', stage=NULL, progress='{}', updated_at=?,"
                " attempts=MAX(0, attempts - ?) WHERE id=? AND status='running'",
                (now, 1 if refund_attempt else 0, job_id),
            )

    def recover(self) -> tuple[list[str], list[str]]:
        """After a restart: jobs left 'running' were interrupted. Requeue those that may try again,
        fail the rest with a reason. Returns (requeued ids, failed ids)."""
        requeued: list[str] = []
        failed: list[str] = []
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT id, attempts FROM jobs WHERE status='running'").fetchall()
            for row in rows:
                if row["attempts"] < MAX_ATTEMPTS:
                    self._db.execute(
                        "UPDATE jobs SET status='queued', stage=NULL, progress='{}', updated_at=? WHERE id=?",
                        (now, row["id"]),
                    )
                    requeued.append(row["id"])
                else:
                    err = JobFailure(
                        code="interrupted",
                        message=(
                            f"the server stopped while this job was running ({row['attempts']} attempts);"
                            " it was not retried again"
                        ),
                        http_status=500,
                    )
                    self._db.execute(
                        f"UPDATE jobs SET status='failed', error=?, finished_at=?, updated_at=?, {_OWE_WEBHOOK}"
                        " WHERE id=?",
                        (json.dumps(err.to_dict()), now, now, row["id"]),
                    )
                    failed.append(row["id"])
            # Deliveries cut short by the stop are owed again (receivers must accept a repeat: the
            # X-Lipsync-Job-Id header identifies it).
            self._db.execute("UPDATE jobs SET webhook_status='pending' WHERE webhook_status='sending'")
        if requeued or failed:
            log.warning("recovered interrupted jobs: requeued %s, failed %s", requeued, failed)
        return requeued, failed

    # --- webhook outbox ----------------------------------------------------------------------------

    def claim_webhook(self, job_id: str) -> bool:
        """pending -> sending; False when someone else has it or none is owed."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET webhook_status='sending' WHERE id=? AND webhook_status='pending'", (job_id,)
            )
        return cur.rowcount == 1

    def settle_webhook(self, job_id: str, outcome: str) -> None:
        """sending -> 'delivered' (the receiver answered) or 'failed' (gave up after the retries)."""
        with self._lock:
            self._db.execute("UPDATE jobs SET webhook_status=? WHERE id=? AND webhook_status='sending'",
                             (outcome, job_id))

    def webhook_status(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT webhook_status FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row["webhook_status"] if row else None

    def pending_webhooks(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE webhook_status='pending' ORDER BY seq").fetchall()
        return [_row_to_record(r) for r in rows]

    # --- retention ---------------------------------------------------------------------------------

    def delete_finished_before(self, cutoff: float) -> list[str]:
        """Delete the rows of jobs that reached a final status before ``cutoff`` (time.time()); their ids."""
        finals = tuple(sorted(FINAL_STATUSES))
        marks = ",".join("?" * len(finals))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE status IN ({marks}) AND finished_at < ?", (*finals, cutoff)
            ).fetchall()
            ids = [r["id"] for r in rows]
            self._db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])
        return ids

    # --- reads --------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}", field="job_id")
        return _row_to_record(row)

    def recent(self, limit: int, *, status: str | None = None, before: str | None = None) -> list[JobRecord]:
        """Newest first, at most ``limit``; ``before`` (a job id) continues a listing after that job."""
        where, args = [], []
        if status is not None:
            where.append("status=?")
            args.append(status)
        if before is not None:
            where.append("seq < (SELECT seq FROM jobs WHERE id=?)")
            args.append(before)
            with self._lock:
                known = self._db.execute("SELECT 1 FROM jobs WHERE id=?", (before,)).fetchone()
            if known is None:
                raise JobNotFound(f"no job with id {before!r} to list from", field="before")
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, int(limit))).fetchall()
        return [_row_to_record(r) for r in rows]

    def queued_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY seq").fetchall()
        return [r["id"] for r in rows]

    def count(self, status: str) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()
        return int(n)
