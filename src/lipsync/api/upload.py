"""Upload of results: a streamed HTTP PUT to the caller's (usually presigned) URL.

Content-Length is always sent (S3 presigned PUTs refuse chunked bodies), Content-Type is video/mp4 by
default. 5xx and connection failures are retried with the file re-read from the start; 4xx is the
caller's URL being wrong (most often an expired presigned URL), reported with S3's own reason when the
body carries one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from lipsync.api.fetch import REDIRECTS, GuardedHTTP
from lipsync.api.netguard import redact
from lipsync.api.watch import TransferWatch
from lipsync.errors import UploadError, UploadRejected, UploadTimeout

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _first_text(resp: httpx.Response, limit: int = 16 * 1024) -> str:
    data = b""
    for chunk in resp.iter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit].decode(resp.encoding or "utf-8", "replace")


def _s3_reason(body: str) -> str:
    """'AccessDenied: Request has expired' from an S3-style XML error body, else a short excerpt."""
    code = re.search(r"<Code>([^<]{1,100})</Code>", body)
    message = re.search(r"<Message>([^<]{1,300})</Message>", body)
    if code or message:
        return ": ".join(m.group(1) for m in (code, message) if m)
    text = " ".join(body.split())[:200]
    return text


class Uploader(GuardedHTTP):
    def check(self, url: str, field: str = "upload_url") -> None:
        super().check(url, field)

    def upload(self, path: Path, url: str, *, content_type: str = "video/mp4", field: str = "upload_url",
               check_stop: Callable[[], None] | None = None) -> int:
        """PUT ``path`` to ``url``; returns the HTTP status. Raises UploadRejected (4xx), UploadTimeout (past
        the total timeout, however slowly the target reads or answers) or UploadError. ``check_stop`` may
        raise (job cancellation) to abandon the transfer, also while blocked on the network."""
        size = path.stat().st_size
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        total = self.limits.upload_total_timeout_s
        watch = TransferWatch.within(
            total,
            lambda: UploadTimeout(f"{field}: the upload to {redact(url)} took longer than {total:g} s"
                                  " (LIPSYNC_UPLOAD_TOTAL_TIMEOUT_S)", field=field),
            check_stop,
        )
        last = ""
        for attempt in range(1, self.limits.attempts + 1):
            current = url
            try:
                with self.client(watch) as client:
                    for _hop in range(self.limits.max_redirects + 1):
                        self.check(current, field)
                        # Streamed: only the first bytes of the target's answer are read (a reason for the
                        # message), so a hostile target cannot make us buffer an endless body.
                        with client.stream("PUT", current, content=_file_chunks(path), headers=headers) as resp:
                            status = resp.status_code
                            if status in REDIRECTS and "location" in resp.headers:
                                current = str(resp.url.join(resp.headers["location"]))
                                continue
                            reason = "" if status < 300 else _s3_reason(_first_text(resp))
                        break
                    if status < 300:
                        log.info("uploaded %d bytes to %s (HTTP %d)", size, redact(url), status)
                        return status
                    if 400 <= status < 500:
                        hint = " (presigned URLs expire: generate a fresh one)" if status == 403 else ""
                        raise UploadRejected(
                            f"{field}: {redact(current)} refused the upload with HTTP {status}"
                            f"{': ' + reason if reason else ''}{hint}",
                            field=field,
                        )
                    last = f"HTTP {status}{': ' + reason if reason else ''}"
            except httpx.HTTPError as exc:
                self.check(current, field)  # a guard refusal at connect time gets its precise message
                last = f"{type(exc).__name__}: {exc}"
            log.info("upload to %s attempt %d failed: %s", redact(url), attempt, last)
            if attempt < self.limits.attempts:
                watch.sleep(self.limits.backoff_s * attempt)
        raise UploadError(f"{field}: upload to {redact(url)} failed after {self.limits.attempts} attempts: {last}",
                          field=field)
