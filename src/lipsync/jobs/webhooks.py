"""Webhook delivery: POST a job's final state to the caller's ``webhook_url``.

The body is signed with HMAC-SHA256 over the exact bytes sent, so receivers verify before parsing:

    expected = "sha256=" + hmac.new(secret, raw_body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-Lipsync-Signature"])

Delivery happens on its own threads (a slow receiver must not hold a worker), with a few retries on
5xx, connection errors and timeouts; each attempt is bounded in total time, however slowly the receiver
answers. The URL guard and the HTTP client are injected: the API passes the same SSRF-guarded transport
it uses for downloads.

Every final state is owed a webhook, whatever led there (a worker, a cancel, crash recovery): the store
marks it owed in the statement that makes the job final (an outbox), the sender claims it before
sending and settles it after, and ``resume`` sends what a stop or a crash left owed. Delivery is at
least once: a receiver may see a job twice (same ``X-Lipsync-Job-Id``) after a crash mid-delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from lipsync.errors import FetchTimeout, LipSyncError
from lipsync.jobs.models import JobRecord
from lipsync.jobs.store import JobStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Lipsync-Signature"
EVENT_HEADER = "X-Lipsync-Event"
JOB_HEADER = "X-Lipsync-Job-Id"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(body, secret), header)


class WebhookSender:
    def __init__(
        self,
        *,
        secret: str | None,
        payload: Callable[[JobRecord], dict[str, Any]],
        client_factory: Callable[[float], httpx.Client],
        guard: Callable[[str], None] | None = None,
        outbox: JobStore | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
        attempt_timeout_s: float = 30.0,
    ) -> None:
        """``client_factory(deadline)`` gives a client whose transfers raise FetchTimeout at the
        ``time.monotonic()`` deadline; ``outbox`` is the store that records what is owed and sent."""
        self.secret = secret
        self.payload = payload
        self.client_factory = client_factory
        self.guard = guard
        self.outbox = outbox
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.attempt_timeout_s = attempt_timeout_s
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def __call__(self, record: JobRecord) -> None:
        """Runner listener: deliver in the background when the job asked for a webhook (and nobody else
        is delivering it already)."""
        if not record.webhook_url:
            return
        if self.outbox is not None and not self.outbox.claim_webhook(record.id):
            return
        t = threading.Thread(target=self._deliver_logged, args=(record,), name=f"webhook-{record.id[:8]}",
                             daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def resume(self) -> int:
        """Send every webhook still owed (jobs that ended while no one could deliver: crash recovery, a
        stop mid-delivery). Returns how many were started."""
        if self.outbox is None:
            return 0
        owed = self.outbox.pending_webhooks()
        for record in owed:
            self(record)
        if owed:
            log.info("sending %d webhook(s) owed from before the restart", len(owed))
        return len(owed)

    def join(self, timeout: float = 5.0) -> None:
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _deliver_logged(self, record: JobRecord) -> None:
        outcome = "failed"
        try:
            status = self.deliver(record)
            outcome = "delivered" if 0 < status < 500 else "failed"
        except LipSyncError as exc:
            log.warning("webhook for job %s not delivered: %s", record.id, exc.message)
        except Exception:
            log.exception("webhook for job %s crashed", record.id)
        finally:
            if self.outbox is not None:
                try:
                    self.outbox.settle_webhook(record.id, outcome)
                except Exception:  # the store closed at shutdown: the restart resends it
                    log.info("webhook for job %s: outcome not recorded", record.id)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def deliver(self, record: JobRecord) -> int:
        """POST once per attempt until a non-5xx answer; returns the final HTTP status."""
        url = record.webhook_url
        if not url:
            return 0
        body = json.dumps({"event": "job.finished", **self.payload(record)}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: "job.finished", JOB_HEADER: record.id}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(body, self.secret)
        status = 0
        for attempt in range(1, self.attempts + 1):
            if self.guard is not None:
                self.guard(url)  # re-resolved each time: DNS may have changed since submission
            try:
                # Streamed and closed unread: the receiver's answer body is never buffered.
                with (self.client_factory(time.monotonic() + self.attempt_timeout_s) as client,
                      client.stream("POST", url, content=body, headers=headers) as resp):
                    status = resp.status_code
            except (httpx.HTTPError, FetchTimeout) as exc:
                log.info("webhook attempt %d for %s failed: %s", attempt, record.id, exc)
                status = 0
            if 0 < status < 500:
                if status >= 400:
                    log.warning("webhook for job %s refused with HTTP %d", record.id, status)
                return status
            if attempt < self.attempts:
                time.sleep(self.backoff_s * attempt)
        log.warning("webhook for job %s gave up after %d attempts (last status %s)", record.id,
                    self.attempts, status)
        return status
