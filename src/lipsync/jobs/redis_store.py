"""Job records in Redis, shared by every API node and every worker of a cluster.

One hash per job (``<ns>:job:<id>``), two sets (queued, running) for the cluster-wide counts, and one
pub/sub channel (``<ns>:events``) that carries ``final <id>`` and ``cancel <id>``. Every state change is a
Lua script, so it is atomic across nodes: two workers handed the same message (delivery is at least
once) cannot both start a job, a stale worker cannot finish a job another took over (``owner``), and a
job reaches exactly one final state.

The message queue itself is Dramatiq's (see redis_queue.py); these records are the truth, the messages
only carry job ids.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from lipsync.errors import JobNotFound, QueueFull, QueueUnavailable
from lipsync.jobs.models import FINAL_STATUSES, JobFailure, JobRecord, StageProgress, new_job_id

_CREATE = """
local max = tonumber(ARGV[1])
if max > 0 and redis.call('SCARD', KEYS[2]) >= max then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: job, queued, running, channel. ARGV: id, owner, now, lost_after, liveness prefix, lost error, ttl ms
_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', 0} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {'final', 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if st == 'running' then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  if owner ~= '' and owner ~= ARGV[2] and redis.call('EXISTS', ARGV[5] .. owner) == 1 then
    return {'busy', attempts}
  end
  if attempts >= tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[6], 'finished_at', ARGV[3],
               'updated_at', ARGV[3], 'owner', '')
    if (redis.call('HGET', KEYS[1], 'webhook_url') or '') ~= '' then
      redis.call('HSET', KEYS[1], 'webhook', 'pending')
    end
    redis.call('SREM', KEYS[3], ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
    redis.call('PUBLISH', KEYS[4], 'final ' .. ARGV[1])
    return {'lost', attempts}
  end
end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[2], 'attempts', attempts + 1,
           'started_at', ARGV[3], 'updated_at', ARGV[3], 'stage', '', 'progress', '{}')
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {'started', attempts + 1}
"""

# KEYS: job, queued, running, channel. ARGV: id, status, now, result, error, owner ('' any), ttl ms, allowed...
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
local ok = false
for i = 8, #ARGV do if ARGV[i] == st then ok = true end end
if not ok then return 0 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[6] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'result', ARGV[4], 'error', ARGV[5], 'finished_at', ARGV[3],
           'updated_at', ARGV[3])
if (redis.call('HGET', KEYS[1], 'webhook_url') or '') ~= '' then
  redis.call('HSET', KEYS[1], 'webhook', 'pending')
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if ARGV[2] == 'cancelled' then redis.call('PUBLISH', KEYS[4], 'cancel ' .. ARGV[1]) end
redis.call('PUBLISH', KEYS[4], 'final ' .. ARGV[1])
return 1
"""

# KEYS: job, queued, running. ARGV: id, owner, now
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
local attempts = math.max(0, tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1') - 1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'stage', '', 'progress', '{}', 'updated_at', ARGV[3],
           'attempts', attempts)
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: job. ARGV: owner, stage, done, total, now. Returns the status ('superseded': another worker owns it).
_PROGRESS = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'running' then return st end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'superseded' end
local p = cjson.decode(redis.call('HGET', KEYS[1], 'progress') or '{}')
p[ARGV[2]] = {tonumber(ARGV[3]), tonumber(ARGV[4])}
redis.call('HSET', KEYS[1], 'stage', ARGV[2], 'progress', cjson.encode(p), 'updated_at', ARGV[5])
return st
"""

# KEYS: job, claim. ARGV: token, claim ttl ms
_CLAIM_WEBHOOK = """
if redis.call('HGET', KEYS[1], 'webhook') ~= 'pending' then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


def redis_client(url: str, *, decode: bool = True, retry_s: float = 30.0) -> redis.Redis:
    """A client that rides out a Redis restart: connection errors are retried with backoff for about
    ``retry_s`` seconds before they surface."""
    retries = max(1, int(retry_s / 0.5))
    return redis.Redis.from_url(
        url, decode_responses=decode, socket_connect_timeout=5, socket_timeout=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=15,
    )


@dataclass(frozen=True)
class StartOutcome:
    """What a delivery found: 'started' (run it, ``attempts`` is this try), 'final' (nothing to run),
    'busy' (a live worker runs it), 'lost' (failed worker_lost now), 'missing' (no such record)."""

    state: str
    attempts: int


def _load(value: str | None) -> Any:
    return json.loads(value) if value else None


def _record(h: dict[str, str]) -> JobRecord:
    def num(name: str) -> float | None:
        return float(h[name]) if h.get(name) else None

    progress = {k: StageProgress(int(v[0]), int(v[1])) for k, v in (_load(h.get("progress")) or {}).items()}
    error = _load(h.get("error"))
    return JobRecord(
        id=h["id"], kind=h["kind"], status=h["status"], params=_load(h["params"]) or {},
        created_at=float(h["created_at"]), updated_at=float(h["updated_at"]),
        started_at=num("started_at"), finished_at=num("finished_at"), attempts=int(h.get("attempts") or 0),
        stage=h.get("stage") or None, progress=progress, result=_load(h.get("result")),
        error=JobFailure.from_dict(error) if error else None, webhook_url=h.get("webhook_url") or None,
    )


class RedisJobStore:
    """The JobStore of a cluster (the same reads as the SQLite store, plus the worker's transitions)."""

    def __init__(self, client: redis.Redis, *, namespace: str = "lipsync", job_ttl_s: float = 7 * 86400) -> None:
        self.r = client
        self.ns = namespace
        self.ttl_ms = int(job_ttl_s * 1000)
        self.queued_key = f"{namespace}:jobs:queued"
        self.running_key = f"{namespace}:jobs:running"
        self.recent_key = f"{namespace}:jobs:recent"  # every job id, scored by creation time (GET /jobs)
        self.channel = f"{namespace}:events"
        self.liveness_prefix = f"{namespace}:worker:"
        self.workers_key = f"{namespace}:workers"
        self._scripts = {name: client.register_script(src) for name, src in (
            ("create", _CREATE), ("start", _START), ("finish", _FINISH), ("requeue", _REQUEUE),
            ("progress", _PROGRESS), ("claim", _CLAIM_WEBHOOK))}

    def key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def close(self) -> None:
        self.r.close()

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._scripts[name](keys=keys, args=args)
        except redis.ConnectionError as exc:
            raise QueueUnavailable(f"the job store (Redis) is unreachable: {exc}") from None

    # --- API side -----------------------------------------------------------------------------------

    def create(self, kind: str, params: dict[str, Any], *, webhook_url: str | None = None,
               max_queued: int | None = None, job_id: str | None = None) -> JobRecord:
        """A queued job. The count of queued jobs across the cluster and the insert are one script,
        so concurrent submits on several API nodes cannot overshoot ``max_queued``."""
        now = repr(time.time())
        job_id = job_id or new_job_id()
        fields = {"id": job_id, "kind": kind, "status": "queued", "params": json.dumps(params),
                  "created_at": now, "updated_at": now, "attempts": 0, "webhook_url": webhook_url or "",
                  "progress": "{}", "owner": "", "webhook": ""}
        flat = [x for pair in fields.items() for x in pair]
        done = self._run("create", [self.key(job_id), self.queued_key], [max_queued or 0, job_id, *flat])
        if done == 0:
            raise QueueFull(f"the job queue is full ({max_queued} jobs waiting across the cluster); retry later")
        if done == -1:
            raise QueueUnavailable(f"a job with id {job_id} already exists")
        self.r.zadd(self.recent_key, {job_id: float(now)})
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Undo a create whose message could not be queued."""
        self.r.delete(self.key(job_id))
        self.r.srem(self.queued_key, job_id)

    def finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None,
               error: JobFailure | None = None, only_if: tuple[str, ...] = ("queued", "running"),
               owner: str = "") -> JobRecord | None:
        """Move a job to a final status; None when it was not in ``only_if`` (or, with ``owner``, when
        another worker owns it now)."""
        args = [job_id, status, repr(time.time()), json.dumps(result) if result is not None else "",
                json.dumps(error.to_dict()) if error is not None else "", owner, self.ttl_ms, *only_if]
        done = self._run("finish", [self.key(job_id), self.queued_key, self.running_key, self.channel], args)
        return self.get(job_id) if done else None

    # --- reads --------------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        try:
            h = self.r.hgetall(self.key(job_id))
        except redis.ConnectionError as exc:
            raise QueueUnavailable(f"the job store (Redis) is unreachable: {exc}") from None
        if not h:
            raise JobNotFound(f"no job with id {job_id!r}", field="job_id")
        return _record(h)

    def recent(self, limit: int, *, status: str | None = None, before: str | None = None) -> list[JobRecord]:
        """Newest first, like the SQLite store's. Ids whose records expired (LIPSYNC_JOB_TTL_S) are dropped
        from the index as they are met."""
        top = "+inf"
        if before is not None:
            score = self.r.zscore(self.recent_key, before)
            if score is None:
                raise JobNotFound(f"no job with id {before!r} to list from", field="before")
            top = f"({score!r}"
        out: list[JobRecord] = []
        while len(out) < limit:
            ids = self.r.zrevrangebyscore(self.recent_key, top, "-inf", start=0, num=max(limit, 50), withscores=True)
            if not ids:
                break
            for job_id, score in ids:
                top = f"({score!r}"
                try:
                    record = self.get(job_id)
                except JobNotFound:
                    self.r.zrem(self.recent_key, job_id)
                    continue
                if status is None or record.status == status:
                    out.append(record)
                    if len(out) == limit:
                        break
        return out

    def count(self, status: str) -> int:
        if status == "queued":
            return int(self.r.scard(self.queued_key))
        if status == "running":
            return int(self.r.scard(self.running_key))
        raise ValueError(f"only queued and running are counted, not {status!r}")

    def owner(self, job_id: str) -> str:
        return self.r.hget(self.key(job_id), "owner") or ""

    # --- worker side --------------------------------------------------------------------------------

    def start(self, job_id: str, owner: str, *, lost_after: int) -> StartOutcome:
        lost = JobFailure(code="worker_lost", http_status=500, message=(
            f"the worker running this job died {lost_after} times (killed, out of memory or crashed);"
            " it is not tried again"))
        state, attempts = self._run(
            "start", [self.key(job_id), self.queued_key, self.running_key, self.channel],
            [job_id, owner, repr(time.time()), lost_after, self.liveness_prefix, json.dumps(lost.to_dict()),
             self.ttl_ms])
        return StartOutcome(str(state), int(attempts))

    def requeue(self, job_id: str, owner: str) -> bool:
        """running -> queued after a graceful stop; the attempt is refunded (the job did nothing wrong)."""
        return bool(self._run("requeue", [self.key(job_id), self.queued_key, self.running_key],
                              [job_id, owner, repr(time.time())]))

    def set_progress(self, job_id: str, owner: str, stage: str, done: int, total: int) -> str:
        """Record progress; returns the job's status ('superseded' when another worker took it over)."""
        return str(self._run("progress", [self.key(job_id)], [owner, stage, int(done), int(total),
                                                             repr(time.time())]))

    def status(self, job_id: str) -> str | None:
        return self.r.hget(self.key(job_id), "status")

    def heartbeat(self, worker_id: str, ttl_s: float, info: str = "") -> None:
        """The liveness key START checks, and a sorted set of last beats so counting workers needs no scan."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.liveness_prefix + worker_id, info or "1", px=int(ttl_s * 1000))
        pipe.zadd(self.workers_key, {worker_id: now + ttl_s})
        pipe.zremrangebyscore(self.workers_key, 0, now - 86400)  # forget workers gone for a day
        pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        self.r.delete(self.liveness_prefix + worker_id)
        self.r.zrem(self.workers_key, worker_id)

    def workers_alive(self) -> int:
        return int(self.r.zcount(self.workers_key, time.time(), "+inf"))

    # --- webhooks: one per final state ----------------------------------------------------------------

    def claim_webhook(self, job_id: str, token: str, ttl_s: float = 120.0) -> bool:
        """True for exactly one caller while the job's webhook is pending (until released or expired)."""
        return bool(self._run("claim", [self.key(job_id), f"{self.ns}:webhook:{job_id}"],
                              [token, int(ttl_s * 1000)]))

    def webhook_done(self, job_id: str, outcome: str) -> None:
        self.r.hset(self.key(job_id), "webhook", outcome)
        self.r.delete(f"{self.ns}:webhook:{job_id}")


def is_final(status: str | None) -> bool:
    return status in FINAL_STATUSES
