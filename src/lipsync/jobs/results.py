"""Where a job's output MP4 waits for GET /jobs/{id}/result when no ``upload_url`` was given.

Embedded mode keeps it in a local folder. A cluster (LIPSYNC_REDIS_URL) needs a store every API node
and every worker reaches, named by LIPSYNC_RESULTS_URL:

* ``file:///mnt/shared/lipsync`` (or a plain absolute path): a shared directory (NFS, a volume);
* ``s3://bucket/prefix``: an S3-compatible bucket through boto3 (credentials from the usual AWS
  variables; LIPSYNC_S3_ENDPOINT_URL for MinIO, R2, moto...).

The same store carries the files of upload jobs (POST /lipsync/upload) from the API node that received
them to the worker that runs the job, under ``inputs/<job id>/``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from lipsync.errors import InputError, ResultsStoreError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class ResultStore(Protocol):
    def put(self, job_id: str, path: Path) -> None:
        """Keep ``path`` as the job's result (the file may be moved away)."""

    def local_path(self, job_id: str) -> Path | None:
        """The result as a local file, when the store is a folder and the file exists."""

    def open(self, job_id: str) -> Iterator[bytes] | None:
        """The result's bytes in chunks; None when there is none."""

    def delete(self, job_id: str) -> None: ...

    def put_inputs(self, job_id: str, files: list[Path]) -> None: ...

    def fetch_inputs(self, job_id: str, dest: Path) -> list[str]:
        """Copy the job's stored inputs into ``dest``; returns their names."""

    def delete_inputs(self, job_id: str) -> None: ...


def _safe_name(name: str) -> str:
    # Names come from our own scratch folder, but a store may be shared: never leave the job's prefix.
    if Path(name).name != name or name in ("", ".", ".."):
        raise InputError(f"bad stored input name {name!r}")
    return name


class DirResults:
    """A folder: ``<root>/<job id>.mp4`` and ``<root>/inputs/<job id>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.mp4"

    def put(self, job_id: str, path: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(job_id)
        partial = target.with_suffix(".part")
        # A shared folder may be another file system: copy to a temp name, then rename, so a reader never
        # sees half a file.
        try:
            os.replace(path, target)
        except OSError:
            shutil.copyfile(path, partial)
            os.replace(partial, target)

    def local_path(self, job_id: str) -> Path | None:
        path = self.path(job_id)
        return path if path.is_file() else None

    def open(self, job_id: str) -> Iterator[bytes] | None:
        path = self.local_path(job_id)
        if path is None:
            return None

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    yield block

        return chunks()

    def delete(self, job_id: str) -> None:
        self.path(job_id).unlink(missing_ok=True)

    def _inputs(self, job_id: str) -> Path:
        return self.root / "inputs" / job_id

    def put_inputs(self, job_id: str, files: list[Path]) -> None:
        folder = self._inputs(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, folder / _safe_name(f.name))

    def fetch_inputs(self, job_id: str, dest: Path) -> list[str]:
        folder = self._inputs(job_id)
        if not folder.is_dir():
            return []
        dest.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        for name in names:
            shutil.copyfile(folder / name, dest / name)
        return names

    def delete_inputs(self, job_id: str) -> None:
        shutil.rmtree(self._inputs(job_id), ignore_errors=True)


class S3Results:
    """An S3-compatible bucket: ``<prefix>/<job id>.mp4`` and ``<prefix>/inputs/<job id>/<name>``."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            try:
                import boto3
            except ImportError:
                raise InputError("LIPSYNC_RESULTS_URL=s3://... needs boto3: pip install 'lipsync[s3]'",
                                 field="results_url") from None
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.s3 = client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ResultsStoreError(f"results store s3://{self.bucket}: {what} failed: {exc}") from None
        except BotoCoreError as exc:
            raise ResultsStoreError(f"results store s3://{self.bucket}: {what} failed: {exc}") from None

    def put(self, job_id: str, path: Path) -> None:
        self._call("upload", self.s3.upload_file, str(path), self.bucket, self._key(f"{job_id}.mp4"),
                   ExtraArgs={"ContentType": "video/mp4"})

    def local_path(self, job_id: str) -> Path | None:
        return None

    def open(self, job_id: str) -> Iterator[bytes] | None:
        obj = self._call("download", self.s3.get_object, Bucket=self.bucket, Key=self._key(f"{job_id}.mp4"))
        if obj is None:
            return None
        return obj["Body"].iter_chunks(CHUNK)

    def delete(self, job_id: str) -> None:
        self._call("delete", self.s3.delete_object, Bucket=self.bucket, Key=self._key(f"{job_id}.mp4"))

    def put_inputs(self, job_id: str, files: list[Path]) -> None:
        for f in files:
            self._call("upload", self.s3.upload_file, str(f), self.bucket,
                       self._key("inputs", job_id, _safe_name(f.name)))

    def _input_keys(self, job_id: str) -> list[str]:
        listing = self._call("list", self.s3.list_objects_v2, Bucket=self.bucket,
                             Prefix=self._key("inputs", job_id) + "/")
        return [item["Key"] for item in (listing or {}).get("Contents", [])]

    def fetch_inputs(self, job_id: str, dest: Path) -> list[str]:
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for key in self._input_keys(job_id):
            name = _safe_name(key.rsplit("/", 1)[-1])
            self._call("download", self.s3.download_file, self.bucket, key, str(dest / name))
            names.append(name)
        return sorted(names)

    def delete_inputs(self, job_id: str) -> None:
        for key in self._input_keys(job_id):
            self._call("delete", self.s3.delete_object, Bucket=self.bucket, Key=key)


def results_store_from_url(url: str, *, endpoint_url: str | None = None) -> ResultStore:
    """``s3://bucket/prefix``, ``file:///dir`` or an absolute path; anything else is a typed error."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InputError(f"LIPSYNC_RESULTS_URL {url!r} names no bucket (s3://bucket/prefix)",
                             field="results_url")
        return S3Results(parsed.netloc, parsed.path, endpoint_url=endpoint_url)
    if parsed.scheme == "file":
        return DirResults(Path(unquote(parsed.path)))
    if parsed.scheme == "" and Path(url).is_absolute():
        return DirResults(Path(url))
    raise InputError(f"LIPSYNC_RESULTS_URL {url!r} is neither s3://bucket/prefix, file:///dir nor an absolute"
                     " path", field="results_url")
