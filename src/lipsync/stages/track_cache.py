"""A cache of face tracks: dubbing one video into several languages tracks it once.

Tracks depend on the video, the tracking settings, the characters' reference images, the face backend and
how many source frames were tracked, never on the audio. An entry is keyed by a SHA-256 over all of these:
the video's and the reference images' *content* (BLAKE2b of the bytes, so a copy or a re-upload hits
and an edited file with the same name does not), the settings as JSON, the backend's fingerprint, and
:data:`TRACKER_VERSION` (bumped whenever the tracker's output changes, which makes older entries stale).

Entries are ``<key>.npz`` files (numpy arrays only, loaded without pickle) under one folder shared by the
CLI and the server. They are written to a temporary name and renamed, so a reader never sees half a file.
A read checks everything it can (the zip's CRCs, the stored key, dtypes, shapes, finite values, frames
in range); anything wrong makes the entry a miss: it is deleted and rebuilt, never trusted. The folder is
bounded in bytes and entries; the least recently used entries (by modification time, touched on every
hit) go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lipsync.config import Settings, default_cache_dir
from lipsync.faces import FaceBackend, TrackingOptions
from lipsync.types import Box, Character, Track, TrackPoint

log = logging.getLogger(__name__)

#: Part of every key: bump it when the tracker's output changes, so older entries are stale.
TRACKER_VERSION = 3  # 3: anonymous faces followed by box continuity (lipsync.faces.tracking)
_FORMAT = 1
_CHUNK = 1 << 20


def content_hash(path: Path) -> str:
    """BLAKE2b-256 of a file's bytes (about 1 GB/s: a minute of 1080p hashes in a fraction of a second)."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def backend_fingerprint(backend: FaceBackend, settings: Settings | None = None) -> str:
    """What identifies a face backend's results: its own ``cache_id`` when it has one, else its name and
    class, its simple settings (and those of its detector and recogniser), and the model files named in
    ``settings``."""
    own = getattr(backend, "cache_id", None)
    if isinstance(own, str):
        return own
    parts: dict[str, object] = {"name": getattr(backend, "name", "?"), "class": type(backend).__qualname__}
    for label, obj in (("backend", backend), ("detector", getattr(backend, "detector", None)),
                       ("recognizer", getattr(backend, "recognizer", None))):  # fmt: skip
        if obj is not None:
            parts[label] = {
                k: v for k, v in sorted(vars(obj).items())
                if not k.startswith("_") and isinstance(v, int | float | str | bool | tuple)
            }  # fmt: skip
    if settings is not None:
        for name in ("det_model", "rec_model"):
            path = getattr(settings, name)
            if path is not None and Path(path).is_file():
                stat = Path(path).stat()
                parts[name] = [str(path), stat.st_size, stat.st_mtime_ns]
    return json.dumps(parts, sort_keys=True, default=str)


def cache_key(
    video: Path, characters: Sequence[Character], options: TrackingOptions, backend_id: str, frames: int
) -> str:
    chars = [
        {"id": c.id, "name": c.name, "images": [content_hash(Path(p)) for p in c.reference_images]}
        for c in characters
    ]
    payload = {
        "tracker": TRACKER_VERSION, "video": content_hash(Path(video)), "frames": int(frames),
        "options": asdict(options), "characters": chars, "backend": backend_id,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class CorruptEntry(Exception):
    """A cache entry failed a check on read (never leaves this module)."""


@dataclass
class TrackCache:
    folder: Path
    max_bytes: int = 512 * 1024**2
    max_entries: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> TrackCache | None:
        """The configured cache, or None when ``track_cache`` is off."""
        if not settings.track_cache:
            return None
        folder = settings.track_cache_dir
        if folder is None:
            folder = (settings.work_dir or default_cache_dir()) / "track-cache"
        return cls(Path(folder), settings.track_cache_max_mb * 1024**2, settings.track_cache_max_entries)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    # -- read ------------------------------------------------------------------------------------------

    def get(self, key: str, frames: int) -> list[Track] | None:
        """The tracks stored under ``key`` (for a video of ``frames`` tracked frames), or None."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tracks = _read(path, key, frames)
        except (CorruptEntry, OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("track cache: ignoring the bad entry %s (%s); tracking again", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        log.info("track cache: hit for %s", key[:12])
        return tracks

    # -- write -----------------------------------------------------------------------------------------

    def put(self, key: str, tracks: Sequence[Track]) -> None:
        """Store ``tracks`` under ``key`` and evict down to the bounds. Failing to write only logs."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            arrays = _arrays(key, tracks)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, **arrays)
                os.replace(tmp, self.path(key))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self.evict()
        except OSError as exc:
            log.warning("track cache: could not store tracks in %s: %s", self.folder, exc)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) per entry, least recently used first."""
        out = []
        for path in self.folder.glob("*.npz"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                out.append((stat.st_mtime, stat.st_size, path))
        return sorted(out)

    def evict(self) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        while entries and (total > self.max_bytes or len(entries) > self.max_entries):
            _, size, path = entries.pop(0)
            with contextlib.suppress(OSError):
                path.unlink()
                log.info("track cache: evicted %s", path.name)
            total -= size


def _arrays(key: str, tracks: Sequence[Track]) -> dict[str, np.ndarray]:
    meta = {"format": _FORMAT, "key": key, "tracks": [[t.character_id, t.name] for t in tracks]}
    out = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for i, track in enumerate(tracks):
        points = [track.points[f] for f in sorted(track.points)]
        out[f"frames{i}"] = np.array([p.frame for p in points], np.int64)
        out[f"boxes{i}"] = np.array([p.box.as_list() for p in points], np.float64).reshape(-1, 4)
        out[f"landmarks{i}"] = np.array([p.landmarks for p in points], np.float32).reshape(-1, 5, 2)
        out[f"similarity{i}"] = np.array([p.similarity for p in points], np.float64)
        out[f"interpolated{i}"] = np.array([p.interpolated for p in points], np.bool_)
    return out


def _read(path: Path, key: str, frames: int) -> list[Track]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}  # reads every member: the zip CRCs are checked
    meta = json.loads(bytes(arrays["meta"]).decode())
    if meta.get("format") != _FORMAT or meta.get("key") != key:
        raise CorruptEntry("stored for another key or format")
    tracks = []
    for i, (cid, name) in enumerate(meta["tracks"]):
        f = arrays[f"frames{i}"]
        boxes, lms = arrays[f"boxes{i}"], arrays[f"landmarks{i}"]
        sims, interp = arrays[f"similarity{i}"], arrays[f"interpolated{i}"]
        n = len(f)
        expected = {"frames": (f, np.int64, (n,)), "boxes": (boxes, np.float64, (n, 4)),
                    "landmarks": (lms, np.float32, (n, 5, 2)), "similarity": (sims, np.float64, (n,)),
                    "interpolated": (interp, np.bool_, (n,))}  # fmt: skip
        for label, (arr, dtype, shape) in expected.items():
            if arr.dtype != dtype or arr.shape != shape:
                raise CorruptEntry(f"{label}{i} has dtype {arr.dtype} and shape {arr.shape}")
        if n and (f.min() < 0 or f.max() >= frames or np.any(np.diff(f) <= 0)):
            raise CorruptEntry("frame numbers out of range or out of order")
        if not (np.isfinite(boxes).all() and np.isfinite(lms).all() and np.isfinite(sims).all()):
            raise CorruptEntry("non-finite values")
        track = Track(str(cid), str(name))
        for j in range(n):
            frame = int(f[j])
            track.points[frame] = TrackPoint(
                frame, Box(*(float(v) for v in boxes[j])), lms[j], float(sims[j]), bool(interp[j])
            )
        tracks.append(track)
    return tracks
