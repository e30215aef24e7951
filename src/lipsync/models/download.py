"""Downloading model files: streamed, resumable, verified, atomic, one process at a time.

The bytes go to ``<dest>.part``; an interrupted transfer resumes from there with an HTTP Range request
(servers that ignore Range are handled by starting over). Only a complete file whose sha256 matches is
renamed to ``dest``, so ``dest`` existing means "complete". A file lock beside ``dest`` makes a second
process wait for the first and then find the file instead of downloading it again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from lipsync.errors import ChecksumMismatch, ModelDownloadError, ModelNotAvailable

log = logging.getLogger(__name__)

# progress(bytes_done, bytes_total_or_None)
ProgressCallback = Callable[[int, int | None], None]

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
HASH_CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    """Network behaviour. Timeouts are per connect / per read (a stalled server errors out after
    ``read_timeout`` seconds without a byte); ``retries`` counts retries per URL after transient
    failures (connection errors, timeouts, 5xx, 429), with exponential backoff."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    lock_timeout: float | None = None  # None: wait as long as the other process downloads
    user_agent: str = "lipsync-model-downloader"


class _Transient(Exception):
    """Worth retrying the same URL (after backoff)."""


class _Permanent(Exception):
    """This URL will not work (404, 403, ...); move to the next mirror."""


class _Unreachable(_Transient):
    """Could not connect at all (refused, timed out): retried, the server may be restarting."""


class _NoSuchHost(_Unreachable):
    """The host name does not resolve, or there is no route to the network: retrying the same URL cannot
    help, so it fails at once (the next mirror is still tried)."""


# OS errors of a connection attempt that no retry can cure.
_HOPELESS_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})


def _hopeless(exc: BaseException) -> bool:
    """Whether a connect error comes from name resolution (socket.gaierror: unknown host, no DNS server)
    or from having no route to the network. httpx wraps the OS error: walk its causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return True
        if isinstance(current, OSError) and current.errno in _HOPELESS_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_verified_record(path: str | Path, sha256: str) -> None:
    """Remember that ``path`` (at its current size and mtime) was checked against ``sha256``, so
    listing models does not re-hash hundreds of megabytes."""
    path = Path(path)
    stat = path.stat()
    _record_path(path).write_text(f"{sha256.lower()} {stat.st_size} {stat.st_mtime_ns}\n")


def read_verified_record(path: str | Path) -> str | None:
    """The sha256 ``path`` was verified against, if the record still matches its size and mtime."""
    path = Path(path)
    try:
        digest, size, mtime = _record_path(path).read_text().split()
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if int(size) != stat.st_size or int(mtime) != stat.st_mtime_ns:
        return None
    return digest


def manual_instructions(urls: Sequence[str], dest: Path) -> str:
    """The sentence every 'cannot download' error ends with."""
    return f"download {urls[0]} by hand and put it at {dest}"


def download(
    urls: str | Sequence[str],
    dest: str | Path,
    sha256: str | None = None,
    *,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    options: DownloadOptions | None = None,
    client: httpx.Client | None = None,
) -> Path:
    """Download the first URL that works to ``dest`` and return ``dest``.

    ``sha256`` (when known) is verified before the file appears at ``dest``; a mismatch deletes the bytes
    and tries the next mirror, and ChecksumMismatch is raised if none matched. ``size`` is only a hint
    for progress when the server sends no length. If ``dest`` already exists it is returned as is.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ModelDownloadError(f"no URL to download {dest} from")
    dest = Path(dest)
    options = options or DownloadOptions()
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest) + ".lock", timeout=-1 if options.lock_timeout is None else options.lock_timeout)
    try:
        with lock:
            if dest.exists():  # another process finished it while we waited for the lock
                log.info("%s is already present", dest)
                return dest
            own_client = client is None
            http = client or _make_client(options)
            try:
                return _download_locked(http, url_list, dest, sha256, size, progress, options)
            finally:
                if own_client:
                    http.close()
    except Timeout:
        raise ModelDownloadError(
            f"another process holds the download lock {lock.lock_file} for over {options.lock_timeout}s"
        ) from None


def _make_client(options: DownloadOptions) -> httpx.Client:
    timeout = httpx.Timeout(options.read_timeout, connect=options.connect_timeout)
    return httpx.Client(
        follow_redirects=True,
        timeout=timeout,
        headers={"User-Agent": options.user_agent, "Accept-Encoding": "identity"},
    )


def _download_locked(
    client: httpx.Client,
    urls: list[str],
    dest: Path,
    sha256: str | None,
    size: int | None,
    progress: ProgressCallback | None,
    options: DownloadOptions,
) -> Path:
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    mismatch: ChecksumMismatch | None = None
    all_unreachable = True
    for index, url in enumerate(urls):
        if index:
            # Mirrors may hold re-uploads with other bytes: never splice one mirror's tail onto
            # another's head. (A .part left by an earlier run still resumes from the primary.)
            part.unlink(missing_ok=True)
        try:
            _fetch_with_retries(client, url, part, size, progress, options)
        except _Unreachable as exc:
            failures.append(f"{url}: {exc}")
            continue
        except (_Transient, _Permanent) as exc:
            all_unreachable = False
            failures.append(f"{url}: {exc}")
            continue
        all_unreachable = False
        if sha256 is not None:
            actual = sha256_file(part)
            if actual.lower() != sha256.lower():
                part.unlink(missing_ok=True)
                mismatch = ChecksumMismatch(
                    f"checksum mismatch for {dest.name} from {url}: expected sha256 {sha256.lower()}, "
                    f"got {actual}; the download was deleted",
                    expected=sha256.lower(),
                    actual=actual,
                )
                failures.append(f"{url}: sha256 {actual} != expected {sha256.lower()}")
                log.warning("%s", mismatch.message)
                continue
        os.replace(part, dest)
        if sha256 is not None:
            write_verified_record(dest, sha256)
        log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
        return dest
    if mismatch is not None and len(urls) == 1:
        raise mismatch
    summary = "; ".join(failures)
    if mismatch is not None:
        raise ChecksumMismatch(
            f"no mirror gave the expected bytes for {dest.name} ({summary})",
            expected=mismatch.expected,
            actual=mismatch.actual,
        )
    if all_unreachable:
        raise ModelNotAvailable(
            f"{dest.name} is missing and the network is unreachable ({summary}); "
            + manual_instructions(urls, dest)
        )
    raise ModelDownloadError(
        f"could not download {dest.name} ({summary}); " + manual_instructions(urls, dest)
    )


def _fetch_with_retries(
    client: httpx.Client,
    url: str,
    part: Path,
    size: int | None,
    progress: ProgressCallback | None,
    options: DownloadOptions,
) -> None:
    attempt = 0
    best = _size_of(part)
    while True:
        try:
            _fetch_once(client, url, part, size, progress, options)
            return
        except _NoSuchHost:
            raise
        except _Transient as exc:
            now = _size_of(part)
            if now > best:  # progress made: a flaky connection, not a dead one; start counting again
                best, attempt = now, 0
            if attempt >= options.retries:
                raise
            delay = min(options.backoff_max, options.backoff * (2**attempt))
            attempt += 1
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1fs", url, exc, attempt, options.retries, delay
            )
            time.sleep(delay)


def _fetch_once(
    client: httpx.Client,
    url: str,
    part: Path,
    size: int | None,
    progress: ProgressCallback | None,
    options: DownloadOptions,
) -> None:
    offset = _size_of(part)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 416:
                # Our .part is as long as (or longer than) the file: complete, or stale garbage.
                total = _content_range_total(response.headers.get("Content-Range"))
                if total is not None and total == offset:
                    return
                part.unlink(missing_ok=True)
                raise _Transient("server rejected the resume offset (416); starting over")
            if status in (429,) or status >= 500:
                raise _Transient(f"HTTP {status}")
            if status >= 400:
                raise _Permanent(f"HTTP {status}")
            if status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"server resumed at byte {start}, not {offset}; starting over")
                mode, done = "ab", offset
            elif status == 200:
                if offset:
                    log.info("%s ignored the Range request; downloading from the start", url)
                mode, done = "wb", 0
                total = _int_or_none(response.headers.get("Content-Length"))
            else:
                raise _Permanent(f"unexpected HTTP {status}")
            # ``size`` (the catalog's figure) only feeds the progress display; completeness is judged
            # against what the server declared, so a wrong catalog size can never reject a good file.
            shown = total or size
            with open(part, mode) as handle:
                if progress:
                    progress(done, shown)
                # Raw chunks as they arrive (no re-buffering): whatever arrived before a stall or a
                # dropped connection is on disk and the retry resumes after it.
                for chunk in response.iter_raw():
                    handle.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, shown)
            if total is not None and done < total:
                raise _Transient(f"connection closed after {done} of {total} bytes")
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if _hopeless(exc):
            raise _NoSuchHost(f"cannot reach the host ({exc}); not retried") from None
        raise _Unreachable(f"cannot connect ({exc})") from None
    except httpx.TimeoutException as exc:
        raise _Transient(
            f"timed out ({type(exc).__name__}; connect {options.connect_timeout}s, read {options.read_timeout}s)"
        ) from None
    except httpx.TransportError as exc:  # dropped connection, protocol error mid-body, ...
        raise _Transient(f"{type(exc).__name__}: {exc}") from None


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        raise _Transient(f"206 response with unusable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _content_range_total(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes\s+\*/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None
