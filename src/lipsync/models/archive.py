"""Extracting the files we use from a downloaded archive (buffalo_l.zip): safely, verified, atomically."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from lipsync.errors import ChecksumMismatch, ModelDownloadError
from lipsync.models.download import HASH_CHUNK, sha256_file, write_verified_record


def extract_zip(
    archive: str | Path,
    dest_dir: str | Path,
    members: Sequence[str] | None = None,
    *,
    sha256: dict[str, str | None] | None = None,
    max_total_bytes: int = 8 << 30,
) -> dict[str, Path]:
    """Extract ``members`` (matched by file name anywhere in the archive; all files when None) flat into
    ``dest_dir``, safely: entries with absolute paths or ``..`` are refused, sizes are bounded, and the
    folder appears atomically (extracted into a temporary sibling, then renamed). ``sha256`` maps member
    names to expected checksums, verified before the folder appears. Returns name -> path."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ModelDownloadError(
            f"{archive} is not a valid zip archive ({exc}); delete it and retry"
        ) from None
    with zf:
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            if info.is_dir():
                continue
            _check_member_name(info.filename, archive)
            name = PurePosixPath(info.filename.replace("\\", "/")).name
            if members is None or name in members:
                if name in chosen:
                    raise ModelDownloadError(f"{archive} holds more than one {name!r}")
                chosen[name] = info
        wanted = list(members) if members is not None else list(chosen)
        absent = [m for m in wanted if m not in chosen]
        if absent:
            raise ModelDownloadError(f"{archive} lacks {', '.join(absent)}; it is not the expected release")
        if sum(info.file_size for info in chosen.values()) > max_total_bytes:
            raise ModelDownloadError(f"{archive} would extract to more than {max_total_bytes} bytes; refused")
        staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
        try:
            for name, info in chosen.items():
                target = staging / name
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, HASH_CHUNK)
                expected = (sha256 or {}).get(name)
                if expected:
                    actual = sha256_file(target)
                    if actual != expected.lower():
                        raise ChecksumMismatch(
                            f"checksum mismatch for {name} inside {archive.name}: expected sha256 "
                            f"{expected.lower()}, got {actual}",
                            expected=expected.lower(),
                            actual=actual,
                        )
                    write_verified_record(target, expected)
            if dest_dir.exists():
                shutil.rmtree(dest_dir)
            os.replace(staging, dest_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return {name: dest_dir / name for name in chosen}


def _check_member_name(filename: str, archive: Path) -> None:
    normalised = filename.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    if normalised.startswith("/") or ".." in parts or (parts and re.match(r"^[A-Za-z]:", parts[0])):
        raise ModelDownloadError(f"{archive} contains an unsafe path {filename!r}; refused to extract it")
