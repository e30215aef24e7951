"""Jobs: records, the SQLite store, the worker pool, webhooks and the engine seam."""

from lipsync.jobs.engine import Engine, EngineOutput, PipelineEngine
from lipsync.jobs.gate import ModelGate, models_needed
from lipsync.jobs.models import FINAL_STATUSES, JOB_STATUSES, JobFailure, JobRecord
from lipsync.jobs.runner import JobContext, JobRunner
from lipsync.jobs.store import JobStore
from lipsync.jobs.webhooks import SIGNATURE_HEADER, WebhookSender, sign, verify

__all__ = [
    "FINAL_STATUSES",
    "JOB_STATUSES",
    "SIGNATURE_HEADER",
    "Engine",
    "EngineOutput",
    "JobContext",
    "JobFailure",
    "JobRecord",
    "JobRunner",
    "JobStore",
    "ModelGate",
    "PipelineEngine",
    "WebhookSender",
    "models_needed",
    "sign",
    "verify",
]
