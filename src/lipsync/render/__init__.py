"""The render engine: runs the per-frame stages (decode, crop, generate, composite, enhance, encode) of a
planned job. The pipeline (lipsync.pipeline) decides *what* to render; this package decides *how*."""

from lipsync.render.job import FaceJob, RenderJob
from lipsync.render.serial import render
from lipsync.render.stats import CharacterStats, PipelineStats, StageTimer

__all__ = ["CharacterStats", "FaceJob", "PipelineStats", "RenderJob", "StageTimer", "render"]
