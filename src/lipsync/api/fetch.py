"""Safe downloads of the request's inputs.

Streaming with httpx through the SSRF-guarded transport; per-input byte limit (Content-Length checked
first, then the running count, after decompression so a gzip bomb is caught too); connect, read and
total timeouts; the first bytes are sniffed so an HTML error page or a text file is refused before
the rest is downloaded; 5xx and connection failures are retried; redirects are followed here, one
checked hop at a time.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from lipsync.api.netguard import check_url, guarded_client, redact
from lipsync.api.watch import TransferWatch
from lipsync.config import Settings
from lipsync.errors import (
    DownloadTooLarge,
    FetchError,
    FetchTimeout,
    LipSyncError,
    MediaNotFound,
    NotAMediaFile,
    UnsafeURL,
)

log = logging.getLogger(__name__)

InputKind = Literal["video", "audio", "image"]
REDIRECTS = frozenset({301, 302, 303, 307, 308})
SNIFF_BYTES = 512

# What each input may be. Stills are valid "video" (the pipeline animates a single portrait); a video
# container is a valid "audio" (its audio track is used).
_ACCEPT: dict[str, frozenset[str]] = {
    "video": frozenset({"mp4", "webm", "avi", "ts", "flv", "mpg", "gif", "jpg", "png", "webp", "bmp"}),
    "audio": frozenset({"wav", "mp3", "aac", "flac", "ogg", "mp4", "webm", "avi", "ts", "flv", "mpg", "aiff"}),
    "image": frozenset({"jpg", "png", "webp", "bmp", "tiff"}),
}


def sniff(head: bytes) -> str | None:
    """The media type the first bytes announce, as a file extension; 'html'/'text' for text; None."""
    b = head
    if len(b) >= 12 and b[4:8] == b"ftyp":
        return "mp4"  # mp4, mov, m4a, 3gp share the ISO base media box layout
    if b.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"  # EBML: Matroska and WebM
    if b.startswith(b"RIFF") and len(b) >= 12:
        return {b"WAVE": "wav", b"AVI ": "avi", b"WEBP": "webp"}.get(b[8:12])
    if b.startswith(b"FORM") and len(b) >= 12 and b[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if b.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if b.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if b.startswith(b"BM") and len(b) >= 14:
        return "bmp"
    if b.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if b.startswith(b"fLaC"):
        return "flac"
    if b.startswith(b"OggS"):
        return "ogg"
    if b.startswith(b"ID3"):
        return "mp3"
    if b.startswith(b"FLV"):
        return "flv"
    if b.startswith(b"\x00\x00\x01\xba"):
        return "mpg"
    if b[:1] == b"\x47" and (len(b) < 189 or b[188:189] == b"\x47"):
        return "ts"
    if len(b) >= 2 and b[0] == 0xFF and (b[1] & 0xF6) == 0xF0:
        return "aac"  # ADTS
    if len(b) >= 2 and b[0] == 0xFF and (b[1] & 0xE0) == 0xE0:
        return "mp3"  # bare MPEG audio frame sync
    text = b.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] == b"<":
        return "html"
    if text and all(32 <= c < 127 or c in (9, 10, 13) for c in text[:256]):
        return "text"
    return None


def unacceptable(found: str | None, kind: InputKind) -> str | None:
    """None when the sniffed type ``found`` is a valid ``kind`` input, else what it is, for a message."""
    if found in _ACCEPT[kind]:
        return None
    if found == "html":
        return "an HTML page"
    if found == "text":
        return "text"
    if found is None:
        return "data in no format we recognise"
    return f"a {found} file"


def expected(kind: InputKind) -> str:
    return f"expected {'an' if kind in ('audio', 'image') else 'a'} {kind} file"


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 2 * 1024**3
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 600.0
    upload_total_timeout_s: float = 1800.0
    max_redirects: int = 5
    attempts: int = 3
    backoff_s: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        return cls(
            max_bytes=settings.max_download_bytes,
            connect_timeout_s=settings.download_connect_timeout_s,
            read_timeout_s=settings.download_read_timeout_s,
            total_timeout_s=settings.download_total_timeout_s,
            upload_total_timeout_s=settings.upload_total_timeout_s,
        )

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.read_timeout_s, pool=10.0
        )


class _Retry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class GuardedHTTP:
    """What downloads and uploads share: the limits, SSRF-guarded clients, and the URL check."""

    def __init__(self, limits: FetchLimits, *, allow_private: bool) -> None:
        self.limits = limits
        self.allow_private = allow_private
        self._ssl: ssl.SSLContext | None = None

    def client(self, watch: TransferWatch | None = None) -> httpx.Client:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # once: loading the CA bundle is slow
        return guarded_client(allow_private=self.allow_private, timeout=self.limits.timeout(), ssl_context=self._ssl,
                              watch=watch)

    def check(self, url: str, field: str) -> None:
        check_url(url, allow_private=self.allow_private, field=field)


class Fetcher(GuardedHTTP):

    def download(self, url: str, dest_stem: Path, *, kind: InputKind, field: str,
                 check_stop: Callable[[], None] | None = None) -> Path:
        """Download ``url`` to ``dest_stem`` + the sniffed extension. Raises a LipSyncError naming
        ``field`` on every failure; nothing partial is left behind. The total timeout, and ``check_stop``
        (which may raise, e.g. job cancellation), hold while blocked on the network too (api/watch.py)."""
        total = self.limits.total_timeout_s
        watch = TransferWatch.within(
            total,
            lambda: FetchTimeout(f"{field}: the download of {redact(url)} took longer than {total:g} s"
                                 " (LIPSYNC_DOWNLOAD_TOTAL_TIMEOUT_S)", field=field),
            check_stop,
        )
        last = ""
        for attempt in range(1, self.limits.attempts + 1):
            try:
                return self._attempt(url, dest_stem, kind=kind, field=field, watch=watch)
            except _Retry as retry:
                last = retry.reason
                log.info("download of %s attempt %d: %s", redact(url), attempt, retry.reason)
                if attempt < self.limits.attempts:
                    pause = self.limits.backoff_s * attempt
                    if pause >= watch.remaining():
                        break
                    watch.sleep(pause)
        raise FetchError(f"{field}: download failed after {self.limits.attempts} attempts: {last}", field=field)

    def _attempt(self, url: str, dest_stem: Path, *, kind: InputKind, field: str, watch: TransferWatch) -> Path:
        current = url
        with self.client(watch) as client:
            for _hop in range(self.limits.max_redirects + 1):
                self.check(current, field)
                try:
                    with client.stream("GET", current, headers={"Accept": "*/*"}) as resp:
                        if resp.status_code in REDIRECTS and "location" in resp.headers:
                            current = str(resp.url.join(resp.headers["location"]))
                            continue
                        return self._save(resp, dest_stem, kind=kind, field=field, watch=watch)
                except LipSyncError:
                    raise
                except _Retry:
                    raise
                except httpx.TimeoutException as exc:
                    what = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for data"
                    limit = (self.limits.connect_timeout_s if isinstance(exc, httpx.ConnectTimeout)
                             else self.limits.read_timeout_s)
                    raise FetchTimeout(
                        f"{field}: timed out {what} from {redact(current)} (limit {limit:g} s)", field=field
                    ) from None
                except httpx.ConnectError as exc:
                    # Re-check for the precise reason when the guard refused at connect time.
                    self.check(current, field)
                    raise _Retry(f"cannot connect to {redact(current)}: {exc}") from None
                except httpx.HTTPError as exc:
                    raise _Retry(f"{type(exc).__name__} from {redact(current)}: {exc}") from None
        raise FetchError(f"{field}: more than {self.limits.max_redirects} redirects", field=field)

    def _save(self, resp: httpx.Response, dest_stem: Path, *, kind: InputKind, field: str,
              watch: TransferWatch) -> Path:
        where = redact(str(resp.url))
        status = resp.status_code
        if status >= 500:
            raise _Retry(f"HTTP {status} from {where}")
        if status in (404, 410):
            raise MediaNotFound(f"{field}: {where} answered HTTP {status} (not found)", field=field)
        if status >= 400:
            raise FetchError(f"{field}: {where} answered HTTP {status}", field=field)
        if status >= 300:
            raise FetchError(f"{field}: {where} answered HTTP {status} without a usable Location", field=field)
        limit = self.limits.max_bytes
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise DownloadTooLarge(
                f"{field}: {where} is {human_size(int(declared))}, over the {human_size(limit)} limit", field=field
            )
        head = b""
        path: Path | None = None
        out = None
        size = 0
        try:
            # Chunks as they arrive (no re-chunking to a fixed size, which waited for 64 KiB between checks).
            for chunk in resp.iter_bytes():
                watch.check()
                size += len(chunk)
                if size > limit:
                    raise DownloadTooLarge(f"{field}: {where} is over the {human_size(limit)} limit", field=field)
                if out is None:
                    head += chunk
                    if len(head) < SNIFF_BYTES:
                        continue
                    path, out = self._open(head, dest_stem, resp, kind=kind, field=field)
                    out.write(head)
                else:
                    out.write(chunk)
            if out is None:  # the whole body was shorter than the sniff window
                if not head:
                    raise NotAMediaFile(f"{field}: {where} sent an empty body", field=field)
                path, out = self._open(head, dest_stem, resp, kind=kind, field=field)
                out.write(head)
            out.close()
            return path  # type: ignore[return-value]  # set together with out
        except BaseException:
            if out is not None:
                out.close()
            if path is not None:
                path.unlink(missing_ok=True)
            raise

    def _open(self, head: bytes, dest_stem: Path, resp: httpx.Response, *, kind: InputKind, field: str):
        found = sniff(head)
        where = redact(str(resp.url))
        ctype = resp.headers.get("content-type", "unknown")
        what = unacceptable(found, kind)
        if what is not None:
            raise NotAMediaFile(f"{field}: {expected(kind)} but {where} sent {what} (Content-Type {ctype})",
                                field=field)
        path = dest_stem.with_name(f"{dest_stem.name}.{found}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, open(path, "wb")


__all__ = ["SNIFF_BYTES", "FetchLimits", "Fetcher", "InputKind", "UnsafeURL", "expected", "human_size", "sniff",
           "unacceptable"]
