"""The render engine: runs the per-frame stages (decode, track, crop, generate, composite, enhance, encode)
of a planned job. The pipeline (lipsync.pipeline) decides *what* to render; this package decides *how*:
``render_pipelined`` (every stage concurrently; what jobs use) or ``render`` (the serial reference)."""

from lipsync.render.job import FaceJob, RenderJob
from lipsync.render.pipelined import Tracking, render_pipelined
from lipsync.render.serial import render
from lipsync.render.stats import CharacterStats, PipelineStats, StageTimer

__all__ = [
    "CharacterStats", "FaceJob", "PipelineStats", "RenderJob", "StageTimer", "Tracking", "render",
    "render_pipelined",
]  # fmt: skip
