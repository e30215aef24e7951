"""Job records: what a job asked for, where it stands, and how it ended.

Kept free of the API's schemas on purpose: the store and runner work on these, the API translates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

JobKind = Literal["lipsync", "face_tracking"]
JOB_KINDS: tuple[str, ...] = get_args(JobKind)

# A job that was interrupted by a server stop this many times is not started again.
MAX_ATTEMPTS = 2


def new_job_id() -> str:
    # Random, unguessable ids: job ids double as capability tokens for GET /jobs/{id}/result.
    return uuid.uuid4().hex


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: a stable code (see lipsync.errors), a message for people, the field to fix."""

    code: str
    message: str
    http_status: int = 500
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, "http_status": self.http_status}
        if self.field:
            out["field"] = self.field
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobFailure:
        return cls(
            code=str(data["code"]),
            message=str(data["message"]),
            http_status=int(data.get("http_status", 500)),
            field=data.get("field"),
        )


@dataclass(frozen=True)
class StageProgress:
    done: int
    total: int

    @property
    def fraction(self) -> float:
        if self.total <= 0:
            return 0.0
        return max(0.0, min(1.0, self.done / self.total))


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    status: str
    params: dict[str, Any]
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    stage: str | None = None
    progress: dict[str, StageProgress] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: JobFailure | None = None
    webhook_url: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES
