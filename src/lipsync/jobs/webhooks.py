"""Webhook delivery: POST a job's final state to the caller's ``webhook_url``.

The body is signed with HMAC-SHA256 over the exact bytes sent, so receivers verify before parsing:

    expected = "sha256=" + hmac.new(secret, raw_body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-Lipsync-Signature"])

Delivery happens on its own threads (a slow receiver must not hold a worker), with a few retries on
5xx and connection errors. The URL guard and the HTTP client are injected: the API passes the same
SSRF-guarded transport it uses for downloads.
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

from lipsync.errors import LipSyncError
from lipsync.jobs.models import JobRecord

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
        client_factory: Callable[[], httpx.Client],
        guard: Callable[[str], None] | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.secret = secret
        self.payload = payload
        self.client_factory = client_factory
        self.guard = guard
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def __call__(self, record: JobRecord) -> None:
        """Runner listener: deliver in the background when the job asked for a webhook."""
        if not record.webhook_url:
            return
        t = threading.Thread(target=self._deliver_logged, args=(record,), name=f"webhook-{record.id[:8]}",
                             daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def join(self, timeout: float = 5.0) -> None:
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _deliver_logged(self, record: JobRecord) -> None:
        try:
            self.deliver(record)
        except LipSyncError as exc:
            log.warning("webhook for job %s not delivered: %s", record.id, exc.message)
        except Exception:
            log.exception("webhook for job %s crashed", record.id)
        finally:
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
                with self.client_factory() as client:
                    status = client.post(url, content=body, headers=headers).status_code
            except httpx.HTTPError as exc:
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
