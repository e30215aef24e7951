"""Names for files derived from other files: a stamp that changes when the source is written again, and a
temporary name to write beside the final one before an atomic rename."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """A hidden name next to ``path`` for writing it whole before an ``os.replace``: unique per process and
    thread, so writers racing for the same file never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def file_stamp(path: Path) -> str:
    """The file's size, mtime and inode: what changes when it is written again (in place or renamed over)."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def short_stamp(path: Path) -> str:
    """file_stamp as 8 hex digits, for the names of files derived from ``path``."""
    return hashlib.sha256(file_stamp(path).encode()).hexdigest()[:8]
