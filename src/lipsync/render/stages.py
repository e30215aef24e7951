"""The bodies of the pipelined engine's stages (lipsync.render.pipelined wires them together).

decode -> track -> frames + prepare crops -> generate -> composite -> enhance -> (encode: the caller's
thread). Each body is a generator over its input pipe; the per-face work is the serial renderer's own
(``face_jobs``, ``sync_prepare``, ``sync_generate``, ``sync_composite`` in lipsync.render.serial), so the two
renderers compute the same pixels.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lipsync.faces import StreamingTracker
from lipsync.media import iter_frames
from lipsync.options import LipSyncOptions
from lipsync.render.engine import FrameBudget
from lipsync.render.job import FaceJob, RenderJob
from lipsync.render.serial import (
    COMPOSITE_THREADS,
    face_jobs,
    frame_source,
    sync_composite,
    sync_crops,
    sync_generate,
    sync_generate_crops,
    sync_mels,
    sync_prepare,
    sync_visible,
)
from lipsync.render.stats import PipelineStats, StageTimer
from lipsync.stages.enhance import FaceEnhancer
from lipsync.stages.frames import render_plan_frame
from lipsync.stages.lipsync import MouthGenerator, batch_parts, generation_plan, torch_threads
from lipsync.stages.poisson_host import load_transforms
from lipsync.types import Track, TrackPoint

# Decoded pictures the track stage holds while their faces are not final yet; beyond this the oldest
# are let go and re-read by the frame stage (a second decode of those frames only). At the default
# tracking settings a frame waits for sample_every (10 on a CPU) + 13 frames of smoothing look-ahead: 24
# pictures of 1080p are 149 MB. 128 MB had let 15 % of a 1080p clip's frames go (decoded twice); 192 MB
# holds them, and 4K or heavy smoothing still re-read rather than grow.
TRACK_WINDOW_BYTES = 192 * 1024**2
RECENT_SOURCE_FRAMES = 4  # source pictures the frame stage keeps after use (a blend reads two)

#: (index, picture or None when the track stage let it go)
SourceItem = tuple[int, np.ndarray | None]


@dataclass
class Batch:
    """Output frames start..stop-1 on their way through the stages."""

    start: int
    stop: int
    frames: list[np.ndarray]
    jobs: list[FaceJob]
    nbytes: int  # taken from the run's FrameBudget; the encoder gives it back
    faces: np.ndarray | None = None
    mels: np.ndarray | None = None
    visible: list[np.ndarray | None] | None = None  # per face: the occlusion mask, or None
    generated: np.ndarray | None = None


def timed(items: Iterator, timer: StageTimer, name: str) -> Iterator:
    """``items``, adding the time spent producing each to ``timer[name]``."""
    while True:
        start = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - start
        yield item


# --- decode and track -----------------------------------------------------------------------------------


def decode_stage(job: RenderJob, timer: StageTimer) -> Callable[[Iterator], Iterator[SourceItem]]:
    """The source frames the plan uses, in order, decoded once."""

    def run(_inbox: Iterator) -> Iterator[SourceItem]:
        decoder = iter_frames(job.video, info=job.info)
        try:
            yield from enumerate(timed(itertools.islice(decoder, job.needed), timer, "decode"))
        finally:
            decoder.close()  # closes the container now, not when the generator is collected

    return run


def track_stage(
    tracker: StreamingTracker, timer: StageTimer, on_done: Callable[[StreamingTracker], None],
    window_bytes: int = TRACK_WINDOW_BYTES,
) -> Callable[[Iterator[SourceItem]], Iterator[SourceItem]]:  # fmt: skip
    """Streaming tracking: a frame goes on once every face in it is final (a bounded look-ahead behind
    the decoder). ``on_done`` runs after the last frame (the pipeline raises NoFaceFound there)."""

    def run(inbox: Iterator[SourceItem]) -> Iterator[SourceItem]:
        pending: deque[list] = deque()
        held = 0
        for index, picture in inbox:
            assert picture is not None  # the decoder always hands pictures
            with timer("track"):
                final = tracker.push(index, picture)
            pending.append([index, picture])
            held += picture.nbytes
            for item in pending:  # over the window: let the oldest pictures go (they are re-read)
                if held <= window_bytes:
                    break
                if item[1] is not None:
                    held -= item[1].nbytes
                    item[1] = None
            while pending and pending[0][0] <= final:
                index, picture = pending.popleft()
                held -= picture.nbytes if picture is not None else 0
                yield index, picture
        with timer("track"):
            tracker.finish()
        on_done(tracker)
        while pending:
            index, picture = pending.popleft()
            yield index, picture

    return run


class LeaderTrack:
    """Without characters: the face that leads so far, as a track (what face_jobs reads). Records which
    faces it answered for, so the pipeline can check the lead never changed (else it renders again)."""

    def __init__(self, tracker: StreamingTracker, character_id: str) -> None:
        self.tracker = tracker
        self.character_id = self.name = character_id
        self.used: set[int] = set()

    def get(self, frame: int) -> TrackPoint | None:
        leader = self.tracker.leader()
        if leader is None:
            return None
        self.used.add(leader)
        return self.tracker.tracks[leader].get(frame)


class SourceFrames:
    """Source pictures by index for the plan: from the track stage's stream while the plan moves forward
    through it (the first pass), else from a FrameReader (loop passes, blends, let-go pictures)."""

    def __init__(self, stream: Iterator[SourceItem], job: RenderJob) -> None:
        self.stream = stream
        self.job = job
        self.top = -1  # the last index the stream gave
        self.recent: OrderedDict[int, np.ndarray] = OrderedDict()
        self._stack = contextlib.ExitStack()
        self._reader: Callable[[int], np.ndarray] | None = None

    def get(self, index: int) -> np.ndarray:
        while self.top < index:
            item = next(self.stream, None)
            if item is None:
                break  # the stream ended early; the reader says why
            self.top, picture = item
            if picture is not None:
                self.recent[self.top] = picture
                while len(self.recent) > RECENT_SOURCE_FRAMES:
                    self.recent.popitem(last=False)
        picture = self.recent.get(index)
        if picture is not None:
            return picture
        if self._reader is None:
            self._reader = frame_source(self.job.video, self.job.info, self._stack)
        return self._reader(index)

    def take(self, index: int) -> np.ndarray:
        """The picture for its last use in the plan, the caller's to modify: the stream's own array, handed
        over (nobody else holds it once the track stage let it go on), or a copy of the reader's (its
        cache keeps the original)."""
        picture = self.get(index)
        if self.recent.pop(index, None) is picture:
            return picture
        return np.array(picture, copy=True)

    def drain(self) -> None:
        """Read the stream to its end: the tracker's last checks run there."""
        for _ in self.stream:
            pass

    def close(self) -> None:
        self._stack.close()


# --- frames, crops, generation, compositing, enhancement ------------------------------------------------


def frames_stage(
    job: RenderJob, views: Sequence[Track], options: LipSyncOptions, chunk: int, budget: FrameBudget,
    timer: StageTimer, stats: PipelineStats, device_crop: bool = False,
) -> Callable[[Iterator[SourceItem]], Iterator[Batch]]:  # fmt: skip
    """Output frames from the plan, in batches of ``chunk``, with the faces to sync cropped; with
    ``device_crop`` (CUDA, no occlusion masker) only their mel windows: the generator crops on its device."""
    width, height = job.info.display_width, job.info.display_height
    frame_bytes = width * height * 3

    def run(inbox: Iterator[SourceItem]) -> Iterator[Batch]:
        last_use = last_plain_uses(job.plan)
        source = SourceFrames(inbox, job)
        try:
            for start in range(0, len(job.plan), chunk):
                stop = min(len(job.plan), start + chunk)
                nbytes = budget.take(frame_bytes * (stop - start))
                with timer("frames"):
                    frames = [source.take(job.plan[i].src) if last_use.get(job.plan[i].src) == i
                              else render_plan_frame(source.get, job.plan[i]) for i in range(start, stop)]  # fmt: skip
                jobs = face_jobs(
                    job.plan, start, stop, views, options.pads_tuple, width, height, stats, job.voices
                )
                batch = Batch(start, stop, frames, jobs, nbytes)
                if jobs and device_crop and job.occlusion is None:  # the masker reads host crops
                    with timer("prepare_faces"):
                        batch.mels = sync_mels(jobs, start, job)
                elif jobs:
                    with timer("prepare_faces"):
                        batch.faces, batch.mels = sync_prepare(frames, jobs, start, job)
                    with timer("occlusion"):
                        batch.visible = sync_visible(batch.faces, job)
                yield batch
            source.drain()
        finally:
            source.close()

    return run


def last_plain_uses(plan: Sequence) -> dict[int, int]:
    """{source frame: the output frame that uses it last}, for the sources whose last use is as a plain
    frame (not a blend): that output frame can take the decoded picture itself instead of a copy (a 1080p
    frame is 6 MB of fresh memory; the copies cost 0.08 CPU s of a 148-frame job at 480p)."""
    last: dict[int, int] = {}
    for i, frame in enumerate(plan):
        last[frame.src] = i
        if frame.is_blend:
            last[frame.src2] = -1  # read by a blend: never handed over there
            last[frame.src] = -1
    return {src: i for src, i in last.items() if i >= 0}


def generate_stage(
    generator: Callable[[], MouthGenerator], batch_size: int, timer: StageTimer
) -> Callable[[Iterator[Batch]], Iterator[Batch]]:
    """Wav2Lip on each batch. ``generator`` gives the network when the stage starts (it may still be
    loading: the stages before this one decode and track meanwhile). Where ``generation_plan`` says so (a
    CPU), each batch is split into parts run side by side, and the next batch starts while the last parts
    of this one finish: single-threaded forwards side by side instead of one forward whose threads wait
    for each other at every layer whenever another stage takes a core. Batches are handed on in order."""

    def run(inbox: Iterator[Batch]) -> Iterator[Batch]:
        network = generator()
        workers, threads = generation_plan(network)

        def generate(faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
            with timer("generate"):
                return sync_generate(faces, mels, network, batch_size)

        crops_on_device = getattr(network, "generate_crops", None)

        def host_crops(batch: Batch) -> Batch:
            # A batch left uncropped for a generator that cannot crop (or runs side by side): crop here.
            if batch.jobs and batch.faces is None:
                with timer("prepare_faces"):
                    batch.faces = sync_crops(batch.frames, batch.jobs)
            return batch

        with torch_threads(threads):
            if workers <= 1:
                for batch in inbox:
                    if batch.jobs and batch.faces is None and crops_on_device is not None:
                        assert batch.mels is not None
                        with timer("generate"):
                            batch.generated = sync_generate_crops(batch.frames, batch.jobs, batch.mels,
                                                                  crops_on_device, batch_size)  # fmt: skip
                        batch.mels = None
                    elif batch.jobs:
                        host_crops(batch)
                        assert batch.faces is not None and batch.mels is not None
                        batch.generated = generate(batch.faces, batch.mels)
                        batch.faces = batch.mels = None
                    yield batch
                return
            yield from _side_by_side(map(host_crops, inbox), generate, workers)

    return run


def _side_by_side(
    inbox: Iterator[Batch], generate: Callable[[np.ndarray, np.ndarray], np.ndarray], workers: int
) -> Iterator[Batch]:
    with ThreadPoolExecutor(workers, "lipsync-generate-worker") as pool:
        pending: deque[tuple[Batch, list[Future[np.ndarray]]]] = deque()

        def finish() -> Batch:
            batch, parts = pending.popleft()
            if parts:
                batch.generated = np.concatenate([part.result() for part in parts])
                batch.faces = batch.mels = None
            return batch

        try:
            for batch in inbox:
                parts: list[Future[np.ndarray]] = []
                if batch.jobs:
                    assert batch.faces is not None and batch.mels is not None
                    parts = [pool.submit(generate, batch.faces[a:b], batch.mels[a:b])
                             for a, b in batch_parts(len(batch.faces), workers)]  # fmt: skip
                pending.append((batch, parts))
                if len(pending) > 1:
                    yield finish()
            while pending:
                yield finish()
        finally:
            for _, parts in pending:  # a stopped run: parts not started are dropped
                for part in parts:
                    part.cancel()


def composite_stage(
    options: LipSyncOptions, timer: StageTimer, stats: PipelineStats
) -> Callable[[Iterator[Batch]], Iterator[Batch]]:
    def run(inbox: Iterator[Batch]) -> Iterator[Batch]:
        if options.poisson_blending and options.poisson_solver == "dst":
            # The sine transforms' module loads now, while this stage waits for its first batch (the
            # network's first forward), rather than in the middle of compositing it.
            load_transforms()
        # Compositing is OpenCV work that releases the GIL: the frames of a batch run in parallel.
        with ThreadPoolExecutor(COMPOSITE_THREADS, "lipsync-composite") as pool:
            for batch in inbox:
                if batch.jobs:
                    assert batch.generated is not None
                    with timer("composite"):
                        sync_composite(batch.frames, batch.jobs, batch.generated, options, stats, pool,
                                       batch.visible)  # fmt: skip
                    batch.generated = batch.visible = None
                yield batch

    return run


def enhance_stage(
    enhancer: FaceEnhancer, timer: StageTimer, stats: PipelineStats
) -> Callable[[Iterator[Batch]], Iterator[Batch]]:
    def run(inbox: Iterator[Batch]) -> Iterator[Batch]:
        for batch in inbox:
            if batch.jobs:
                with timer("enhance"):
                    # Faces fading toward the source (silence=original) stay as blended.
                    faces = [(j.slot, j.landmarks) for j in batch.jobs if j.weight >= 1.0]
                    stats.enhanced += enhancer(batch.frames, faces)
            yield batch

    return run
