"""Shared fixtures. Real media comes from ../shared (skipped with a reason when absent); everything
else is synthesised by the tests themselves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests never share tracks through the user's cache folder (a hit would skip the tracking they test);
# the cache's own tests turn it on, in a temporary folder.
os.environ["LIPSYNC_TRACK_CACHE"] = "false"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MEDIA = SHARED / "media"
SHARED_MODELS = SHARED / "models"
MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


def shared_file(name: str) -> Path:
    """A file from ../shared/media, or a skip naming what is missing."""
    path = SHARED_MEDIA / name
    if not path.exists():
        pytest.skip(f"needs ../shared/media/{name} (the shared test media is not beside this checkout)")
    return path


def shared_model(name: str) -> Path:
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"needs ../shared/models/{name} (the shared test models are not beside this checkout)")
    return path


@pytest.fixture
def shared_media():
    return shared_file


@pytest.fixture(scope="session")
def espeak() -> str:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        pytest.skip("needs espeak-ng (apt-get install espeak-ng) for synthetic speech")
    return exe
