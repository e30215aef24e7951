"""lipsync: re-animate the mouths of chosen faces in a video to a new speech track."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lipsync")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
