"""Serving a result file that the retention sweep may delete while it is being downloaded."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def held_file(path: Path) -> tuple[str, os.stat_result, Callable[[], None]] | None:
    """Open ``path`` now: (the path to serve, its stat, the closer), or None when it is already gone.

    A response that opened the file only when sending (after its Content-Length went out) was cut short,
    with no body, when retention deleted the file in between. An open file outlives its name, so on Linux
    the open file itself is served (``/proc/self/fd/N``, which Range requests can reopen too); elsewhere the
    name, as before."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the response's background task
    except FileNotFoundError:
        return None
    fd_path = f"/proc/self/fd/{handle.fileno()}"
    served = fd_path if os.path.exists(fd_path) else str(path)
    return served, os.fstat(handle.fileno()), handle.close
