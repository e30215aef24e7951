"""Steps 4 and 5 of the recipe, one bounded batch of output frames at a time: render the plan frame
(crossfades blended here, before generation), crop each tracked face, run Wav2Lip, paste the mouth back
(Poisson, feathered fallback), optionally enhance the synced faces, and encode the batch on a worker
thread while the next one is made.

Memory is bounded by the batch and a few cached decode blocks, never by the video's length.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lipsync.audio import mel_batch
from lipsync.errors import MediaError
from lipsync.media import AudioSource, FrameReader, MediaInfo, VideoWriter, iter_frames
from lipsync.media.encoders import resolve_encoder
from lipsync.options import LipSyncOptions
from lipsync.render.job import FaceJob, RenderJob
from lipsync.render.stats import PipelineStats, StageTimer
from lipsync.stages.composite import composite_face
from lipsync.stages.encode import BackgroundEncoder
from lipsync.stages.enhance import FaceEnhancer
from lipsync.stages.frames import point_for, render_plan_frame
from lipsync.stages.lipsync import MouthGenerator, postprocess_face, prepare_face
from lipsync.types import Track

ProgressCallback = Callable[[str, int, int], None]

# Frames held at once are capped by bytes as well as by the batch size, so 4K input cannot exhaust memory.
FRAME_BUFFER_BYTES = 256 * 1024**2
READER_BLOCK_BYTES = 32 * 1024**2
# Poisson blending is single-threaded OpenCV work; a few threads keep it off the critical path on big CPUs.
COMPOSITE_THREADS = max(1, min(8, os.cpu_count() or 1))


def render(
    job: RenderJob, options: LipSyncOptions, output: Path, tracks: list[Track], generator: MouthGenerator,
    enhancer: FaceEnhancer | None, batch: int, timer: StageTimer, stats: PipelineStats,
    report: ProgressCallback,
) -> None:  # fmt: skip
    """Render every output frame of ``job`` into ``output``; a failed run leaves no file there."""
    output = Path(output)
    num_out = len(job.plan)
    width, height = job.info.display_width, job.info.display_height
    chunk = max(1, min(batch, FRAME_BUFFER_BYTES // max(1, width * height * 3)))
    # Written under a temporary name and renamed at the end: a failed run leaves no half-written output.
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    encoder: BackgroundEncoder | None = None
    try:
        with contextlib.ExitStack() as stack:
            get_frame = frame_source(job.video, job.info, stack)
            # Entered before the writer, so the stack closes it after the writer (whose close reads
            # the rest of the audio it needs), on success and on error alike.
            audio = stack.enter_context(open_audio(job.audio, job.out_rate))
            enc = resolve_encoder(options.encoder, options.crf, options.preset, stats.device)
            writer = VideoWriter(
                partial, width, height, job.fps, crf=enc.crf, preset=enc.preset, codec=enc.codec, audio=audio,
            )  # fmt: skip
            stack.enter_context(writer)
            encoder = BackgroundEncoder(writer)
            stack.callback(encoder.stop)  # on error: stop the worker before the writer is closed
            # Compositing is OpenCV work that releases the GIL: frames of a batch run in parallel.
            pool = stack.enter_context(ThreadPoolExecutor(COMPOSITE_THREADS, "lipsync-composite"))
            report("lipsync", 0, num_out)
            for start in range(0, num_out, chunk):
                stop = min(num_out, start + chunk)
                with timer("decode"):
                    frames = [render_plan_frame(get_frame, job.plan[i]) for i in range(start, stop)]
                jobs = face_jobs(job.plan, start, stop, tracks, options.pads_tuple, width, height, stats)
                if jobs:
                    sync_faces(frames, jobs, start, job, generator, batch, options, timer, stats, pool)
                    if enhancer is not None:
                        with timer("enhance"):
                            stats.enhanced += enhancer(frames, [(j.slot, j.landmarks) for j in jobs])
                with timer("encode_wait"):  # only when the encoder is a batch behind
                    encoder.put(frames)
                report("lipsync", stop, num_out)
            report("encode", 0, 1)
            with timer("encode_wait"):
                encoder.join()
                stack.close()  # closing the writer flushes the encoder and muxes the audio
        os.replace(partial, output)
    finally:
        if encoder is not None:
            timer.seconds["encode"] = encoder.busy_seconds
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    report("encode", 1, 1)


def open_audio(audio: Path, rate: int) -> AudioSource:
    """The new audio, streamed at ``rate`` for the writer; mono or stereo as the source (surround is
    folded to stereo). The caller closes it."""
    try:
        return AudioSource.open(audio, rate, mono=False)
    except MediaError as exc:
        raise exc.named("audio") from None


def frame_source(video: Path, info: MediaInfo, stack: contextlib.ExitStack) -> Callable[[int], np.ndarray]:
    if info.is_image:
        still = next(iter(iter_frames(video, info=info)))
        return lambda _i: still
    # Three cached blocks: a crossfade reads the clip's tail and head alternately (the tail may straddle
    # two blocks), a pingpong turn reads backwards. Blocks are sized to about 32 MB of decoded frames.
    frame_bytes = max(1, info.display_width * info.display_height * 3)
    block = int(min(32, max(4, READER_BLOCK_BYTES // frame_bytes)))
    reader = stack.enter_context(FrameReader(video, info=info, block=block, max_blocks=3))
    return reader.get


def face_jobs(
    plan: Sequence, start: int, stop: int, tracks: Sequence[Track], pads: tuple[int, int, int, int],
    width: int, height: int, stats: PipelineStats,
) -> list[FaceJob]:  # fmt: skip
    jobs: list[FaceJob] = []
    for slot, i in enumerate(range(start, stop)):
        plan_frame = plan[i]
        for ci, track in enumerate(tracks):
            cstats = stats.characters[track.character_id]
            point = point_for(track, plan_frame)
            box = point.box.padded(pads, width, height) if point is not None else None
            # A face too small (or clipped away) to crop passes through like an absent one.
            if box is None or box.width < 4 or box.height < 4:
                cstats.frames_passed_through += 1
                continue
            cstats.frames_synced += 1
            jobs.append(FaceJob(slot, ci, box, point.landmarks))
    return jobs


def sync_faces(
    frames: list[np.ndarray], jobs: list[FaceJob], start: int, job: RenderJob, generator: MouthGenerator,
    batch: int, options: LipSyncOptions, timer: StageTimer, stats: PipelineStats, pool: Executor,
) -> None:  # fmt: skip
    """Crop, generate and composite every face of one batch of output frames (in place in ``frames``)."""
    with timer("prepare_faces"):
        faces = np.stack([prepare_face(frames[j.slot], j.box) for j in jobs])
        mels = mel_batch(job.mel, [start + j.slot for j in jobs], job.fps)
    with timer("generate"):
        generated = np.concatenate(
            [generator(faces[k : k + batch], mels[k : k + batch]) for k in range(0, len(jobs), batch)]
        )
    by_slot: dict[int, list[tuple[FaceJob, np.ndarray]]] = {}
    for face_job, face in zip(jobs, generated, strict=True):
        by_slot.setdefault(face_job.slot, []).append((face_job, face))

    def composite_frame(slot: int) -> tuple[int, np.ndarray, list[str]]:
        # Faces of one frame go one after the other (they may overlap); frames are independent.
        frame, methods = frames[slot], []
        for face_job, face in by_slot[slot]:
            result = composite_face(
                frame, postprocess_face(face, face_job.box), face_job.box, poisson=options.poisson_blending
            )
            frame = result.frame
            methods.append(result.method)
        return slot, frame, methods

    with timer("composite"):
        for slot, frame, methods in pool.map(composite_frame, list(by_slot)):
            frames[slot] = frame
            stats.poisson += methods.count("poisson")
            stats.feather += len(methods) - methods.count("poisson")
    stats.faces_synced += len(jobs)
