"""The HTTP API: ``create_app(settings, *, pipeline_factory=None)``."""

from lipsync.api.app import create_app

__all__ = ["create_app"]
