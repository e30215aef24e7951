"""Steps 3 to 5 of the recipe as one pipelined run: decode -> track -> frames + crops -> generate ->
composite -> enhance -> encode, every stage on its own thread (lipsync.render.engine), the encoder on the
caller's thread (where progress is reported, so a progress callback that raises cancels the run).

The video is decoded once for tracking and the first pass of the plan; loop passes after it re-read the
frames they need through a FrameReader (as the serial renderer does), with the track kept. When the
tracks are already known (the tracking cache), the track stage is left out.

Memory: the pictures alive at once are bounded by PIPELINE_FRAME_BYTES across the batch stages, plus the
track stage's window (TRACK_WINDOW_BYTES, about sample_every + 13 frames at the default settings) and a
few frames per pipe: flat in the video's length.
A failed or cancelled run raises its error and leaves no file at ``output``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from lipsync.faces import StreamingTracker
from lipsync.faces.tracking import ANONYMOUS_ID
from lipsync.options import LipSyncOptions
from lipsync.render.engine import POLL_S, FrameBudget, RunState, Stage, run_stages
from lipsync.render.job import RenderJob
from lipsync.render.serial import FRAME_BUFFER_BYTES, open_writer, partial_path
from lipsync.render.stages import (
    Batch,
    LeaderTrack,
    composite_stage,
    decode_stage,
    enhance_stage,
    frames_stage,
    generate_stage,
    track_stage,
)
from lipsync.render.stats import PipelineStats, StageTimer
from lipsync.stages.enhance import FaceEnhancer
from lipsync.stages.lipsync import MouthGenerator
from lipsync.types import Track

ProgressCallback = Callable[[str, int, int], None]

BATCH_DEPTH = 2  # batches a pipe between two batch stages holds
FRAME_DEPTH = 4  # source frames a pipe between decode, track and the frame stage holds
# Output pictures alive at once across the batch stages (twice the serial renderer's one batch), shared
# by about BATCHES_IN_FLIGHT batches so that every stage has one to work on: 1080p gets batches of 20.
PIPELINE_FRAME_BYTES = 2 * FRAME_BUFFER_BYTES
BATCHES_IN_FLIGHT = 4
PROGRESS_EVERY_S = 0.25  # the encoder thread reports (and so notices a cancellation) at least this often


@dataclass
class Tracking:
    """Where the render's faces come from: known tracks, or a streaming tracker that runs in the render."""

    tracks: list[Track] | None = None
    tracker: StreamingTracker | None = None
    on_done: Callable[[StreamingTracker], None] | None = None  # after the tracker's last frame
    leader: LeaderTrack | None = None  # without characters, the live view of the leading face

    def views(self) -> Sequence:
        """What the frame stage reads each character's face from (the same objects on every call)."""
        if self.tracks is not None:
            return self.tracks
        assert self.tracker is not None
        if self.tracker.anonymous:
            if self.leader is None:
                self.leader = LeaderTrack(self.tracker, ANONYMOUS_ID)
            return [self.leader]
        return self.tracker.tracks


def chunk_frames(job: RenderJob, batch: int) -> int:
    frame_bytes = max(1, job.info.display_width * job.info.display_height * 3)
    return max(1, min(batch, PIPELINE_FRAME_BYTES // (BATCHES_IN_FLIGHT * frame_bytes)))


def render_pipelined(
    job: RenderJob, options: LipSyncOptions, output: Path, tracking: Tracking,
    generator: MouthGenerator | Future[MouthGenerator], enhancer: FaceEnhancer | None, batch: int,
    timer: StageTimer, stats: PipelineStats, report: ProgressCallback, *, device_crop: bool = False,
) -> None:  # fmt: skip
    """Render every output frame of ``job`` into ``output``; a failed run leaves no file there.
    ``generator`` may be a Future of one still loading: decoding and tracking start at once, and the
    generate stage waits for it (its load error is the run's error). ``device_crop``: the faces are cut
    and resized on the generator's device (CUDA) when it can (``generate_crops``) and no occlusion masker
    needs them on the host."""
    output = Path(output)
    num_out = len(job.plan)
    chunk = chunk_frames(job, batch)
    state = RunState()
    budget = FrameBudget(state, PIPELINE_FRAME_BYTES)
    views = tracking.views()
    stages = [Stage("decode", decode_stage(job, timer), FRAME_DEPTH)]
    if tracking.tracker is not None:
        done = tracking.on_done or (lambda _t: None)
        stages.append(Stage("track", track_stage(tracking.tracker, timer, done), FRAME_DEPTH))
    stages += [
        Stage(
            "frames", frames_stage(job, views, options, chunk, budget, timer, stats, device_crop), BATCH_DEPTH
        ),
        Stage("generate", generate_stage(_awaited(generator, state, timer), batch, timer), BATCH_DEPTH),
        Stage("composite", composite_stage(options, timer, stats), BATCH_DEPTH),
    ]
    if enhancer is not None:
        stages.append(Stage("enhance", enhance_stage(enhancer, timer, stats), BATCH_DEPTH))

    progress = _Progress(report, tracking.tracker, job.needed, num_out, enhancing=enhancer is not None)
    partial = partial_path(output)
    try:
        with contextlib.ExitStack() as stack:
            writer = open_writer(stack, job, options, partial, stats.device)

            def encode(batches: Iterator[Batch]) -> None:
                for item in batches:
                    with timer("encode"):
                        for frame in item.frames:
                            writer.write(frame)
                    budget.give(item.nbytes)
                    progress.frames(item.stop)
                progress.finish()

            report("lipsync", 0, num_out)
            run_stages(stages, encode, state=state, idle=progress.tick)
            report("encode", 0, 1)
            with timer("encode"):
                stack.close()  # closing the writer flushes the encoder and muxes the audio
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    report("encode", 1, 1)


def _awaited(
    generator: MouthGenerator | Future[MouthGenerator], state: RunState, timer: StageTimer
) -> Callable[[], MouthGenerator]:
    """The generator, waiting (as "load_models") for one still loading; a stopped run stops waiting."""

    def get() -> MouthGenerator:
        if not isinstance(generator, Future):
            return generator
        with timer("load_models"):
            while True:
                state.check()
                try:
                    return generator.result(timeout=POLL_S)
                except FutureTimeout:
                    continue

    return get


class _Progress:
    """Progress from the encoder's thread, at most every PROGRESS_EVERY_S (each call may raise to cancel):
    the tracker's frames until the first frames are written, then the frames written."""

    def __init__(self, report: ProgressCallback, tracker: StreamingTracker | None, needed: int, total: int,
                 *, enhancing: bool = False):  # fmt: skip
        self.report, self.tracker, self.needed, self.total = report, tracker, needed, total
        self.enhancing = enhancing  # enhancement is its own stage in the progress, not folded in
        self.done = 0
        self.last = time.monotonic()

    def frames(self, done: int) -> None:
        self.done = done
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        if self.done == 0 and self.tracker is not None:
            self.report("track", self.tracker.frames_read, self.needed)
        else:
            self._frames(self.done)

    def _frames(self, done: int) -> None:
        self.report("lipsync", done, self.total)
        if self.enhancing:
            self.report("enhance", done, self.total)

    def finish(self) -> None:
        if self.tracker is not None:
            self.report("track", self.needed, self.needed)
        self._frames(self.total)
