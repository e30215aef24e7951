"""Steps 4 and 5 of the recipe, one bounded batch of output frames at a time: render the plan frame
(crossfades blended here, before generation), crop each tracked face, run Wav2Lip, paste the mouth back
(Poisson, feathered fallback), optionally enhance the synced faces, and encode the batch on a worker
thread while the next one is made.

Memory is bounded by the batch and a few cached decode blocks, never by the video's length.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lipsync.errors import MediaError
from lipsync.faces.pose import estimate_pose
from lipsync.media import AudioSource, FrameReader, MediaInfo, VideoWriter, iter_frames
from lipsync.media.encoders import resolve_encoder
from lipsync.media.mix import MixedAudioSource
from lipsync.options import LipSyncOptions
from lipsync.render.job import FaceJob, RenderJob
from lipsync.render.stats import PipelineStats, StageTimer
from lipsync.stages.align_crop import crop_face, crop_mask, face_crop, paste_face
from lipsync.stages.encode import BackgroundEncoder
from lipsync.stages.enhance import FaceEnhancer
from lipsync.stages.frames import point_for, render_plan_frame
from lipsync.stages.lipsync import MouthGenerator
from lipsync.stages.silence import VoicePlan, fade_face
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
    partial = partial_path(output)
    encoder: BackgroundEncoder | None = None
    try:
        with contextlib.ExitStack() as stack:
            get_frame = frame_source(job.video, job.info, stack)
            writer = open_writer(stack, job, options, partial, stats.device)
            encoder = BackgroundEncoder(writer)
            stack.callback(encoder.stop)  # on error: stop the worker before the writer is closed
            # Compositing is OpenCV work that releases the GIL: frames of a batch run in parallel.
            pool = stack.enter_context(ThreadPoolExecutor(COMPOSITE_THREADS, "lipsync-composite"))
            report("lipsync", 0, num_out)
            for start in range(0, num_out, chunk):
                stop = min(num_out, start + chunk)
                with timer("decode"):
                    frames = [render_plan_frame(get_frame, job.plan[i]) for i in range(start, stop)]
                jobs = face_jobs(
                    job.plan, start, stop, tracks, options.pads_tuple, width, height, stats, job.voices
                )
                if jobs:
                    sync_faces(frames, jobs, start, job, generator, batch, options, timer, stats, pool)
                    if enhancer is not None:
                        with timer("enhance"):
                            # Faces fading toward the source (silence=original) stay as blended.
                            faces = [(j.slot, j.landmarks) for j in jobs if j.weight >= 1.0]
                            stats.enhanced += enhancer(frames, faces)
                with timer("encode_wait"):  # only when the encoder is a batch behind
                    encoder.put(frames)
                report("lipsync", stop, num_out)
                if enhancer is not None:
                    report("enhance", stop, num_out)  # its own stage, not folded into lip-syncing
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


def open_writer(
    stack: contextlib.ExitStack, job: RenderJob, options: LipSyncOptions, partial: Path, device: str
) -> VideoWriter:
    """The output writer of a render, entered on ``stack``, with the job's sound streamed into it and the
    encoder the options resolve for ``device``. The sound is entered first, so the stack closes it after
    the writer (whose close reads the rest of the audio it needs), on success and on error alike."""
    audio = stack.enter_context(open_audio(job.audio, job.out_rate, job.audio_offset))
    enc = resolve_encoder(options.encoder, options.crf, options.preset, device)
    width, height = job.info.display_width, job.info.display_height
    writer = VideoWriter(
        partial, width, height, job.fps, crf=enc.crf, preset=enc.preset, codec=enc.codec, audio=audio,
        x264_params=enc.x264_params,
    )  # fmt: skip
    return stack.enter_context(writer)


def partial_path(output: Path) -> Path:
    """Where a render writes before the rename: a failed run leaves no half-written output."""
    return output.with_name(f".{output.stem}.partial{output.suffix}")


def open_audio(
    audio: Path | tuple[tuple[Path, str], ...], rate: int, offset_s: float = 0.0
) -> AudioSource | MixedAudioSource:
    """The new audio, streamed at ``rate`` for the writer; mono or stereo as the source (surround is
    folded to stereo). (path, field) pairs: the characters' stems, mixed. The caller closes it."""
    if isinstance(audio, tuple):
        return MixedAudioSource.open(audio, rate)
    try:
        return AudioSource.open(audio, rate, mono=False, offset_s=offset_s)
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
    width: int, height: int, stats: PipelineStats, voices: VoicePlan | None = None,
) -> list[FaceJob]:  # fmt: skip
    jobs: list[FaceJob] = []
    for slot, i in enumerate(range(start, stop)):
        plan_frame = plan[i]
        for ci, track in enumerate(tracks):
            cstats = stats.characters[track.character_id]
            point = point_for(track, plan_frame)
            crop = face_crop(point.box, point.landmarks, pads, width, height) if point is not None else None
            # A face too small (or clipped away) to crop passes through like an absent one.
            # A silent speaker's face passes through too in silence=original mode (weight 0).
            weight = voices.face_weight(ci, i) if voices is not None else 1.0
            if crop is None or weight <= 0.0:
                cstats.frames_passed_through += 1
                continue
            cstats.frames_synced += 1
            cstats.frames_rotated += not crop.upright
            cstats.frames_beyond_pose_limit += estimate_pose(point.landmarks).beyond_limits()
            jobs.append(FaceJob(slot, ci, crop.box, point.landmarks, weight=weight, crop=crop))
    return jobs


def sync_faces(
    frames: list[np.ndarray], jobs: list[FaceJob], start: int, job: RenderJob, generator: MouthGenerator,
    batch: int, options: LipSyncOptions, timer: StageTimer, stats: PipelineStats, pool: Executor,
) -> None:  # fmt: skip
    """Crop, generate and composite every face of one batch of output frames (in place in ``frames``).
    Its three parts are also the pipelined engine's prepare, generate and composite stages."""
    with timer("prepare_faces"):
        faces, mels = sync_prepare(frames, jobs, start, job)
    with timer("occlusion"):  # visible-face masks of the crops, or none (the plain lower-face mask)
        visible = sync_visible(faces, job)
    with timer("generate"):
        generated = sync_generate(faces, mels, generator, batch)
    with timer("composite"):
        sync_composite(frames, jobs, generated, options, stats, pool, visible)


def sync_prepare(
    frames: list[np.ndarray], jobs: list[FaceJob], start: int, job: RenderJob
) -> tuple[np.ndarray, np.ndarray]:
    """The generator's inputs for the faces of one batch: 96x96 aligned crops and their mel windows, each
    face's window from its own character's track (gated by silence=closed)."""
    return sync_crops(frames, jobs), sync_mels(jobs, start, job)


def sync_crops(frames: list[np.ndarray], jobs: list[FaceJob]) -> np.ndarray:
    """The 96x96 aligned crops of one batch's faces, cut on the host."""
    return np.stack([crop_face(frames[j.slot], j.aligned) for j in jobs])


def sync_mels(jobs: list[FaceJob], start: int, job: RenderJob) -> np.ndarray:
    """Each face's mel window, from its own character's track (gated by silence=closed)."""
    return job.voices.mel_windows([j.character for j in jobs], [start + j.slot for j in jobs])


def sync_visible(faces: np.ndarray, job: RenderJob) -> list[np.ndarray | None]:
    """Per crop, where the face is visible (the occlusion mask), or None everywhere without a masker."""
    return job.occlusion(faces) if job.occlusion is not None else [None] * len(faces)


def sync_generate(faces: np.ndarray, mels: np.ndarray, generator: MouthGenerator, batch: int) -> np.ndarray:
    return np.concatenate(
        [generator(faces[k : k + batch], mels[k : k + batch]) for k in range(0, len(faces), batch)]
    )


def sync_generate_crops(
    frames: list[np.ndarray], jobs: list[FaceJob], mels: np.ndarray, generate_crops, batch: int
) -> np.ndarray:
    """sync_generate for a generator that cuts the crops itself, on its device (``generate_crops``)."""
    slots, crops = [j.slot for j in jobs], [j.aligned for j in jobs]
    return np.concatenate([
        generate_crops(frames, slots[k : k + batch], crops[k : k + batch], mels[k : k + batch])
        for k in range(0, len(jobs), batch)
    ])  # fmt: skip


def sync_composite(
    frames: list[np.ndarray], jobs: list[FaceJob], generated: np.ndarray, options: LipSyncOptions,
    stats: PipelineStats, pool: Executor, visible: list[np.ndarray | None] | None = None,
) -> None:  # fmt: skip
    """Paste each generated face back into its frame (in place in ``frames``), through the inverse of its
    crop, under its (occlusion-aware) mask, faded toward the source where its speaker is silent."""
    visible = visible if visible is not None else [None] * len(jobs)
    by_slot: dict[int, list[tuple[FaceJob, np.ndarray, np.ndarray | None]]] = {}
    for face_job, face, occ in zip(jobs, generated, visible, strict=True):
        by_slot.setdefault(face_job.slot, []).append((face_job, face, occ))

    def composite_frame(slot: int) -> tuple[int, np.ndarray, list[str]]:
        # Faces of one frame go one after the other (they may overlap); frames are independent.
        # The frame is the batch's own (render_plan_frame made it): faces are pasted into it in place,
        # except one faded toward the source, whose blend needs the frame as it was.
        frame, methods = frames[slot], []
        for face_job, face, occ in by_slot[slot]:
            mask = crop_mask(face_job.aligned, shrink=options.mask_shrink, occlusion=occ)
            soft = functools.partial(crop_mask, face_job.aligned, shrink=options.mask_shrink, occlusion=occ,
                                     feather=True)  # fmt: skip
            result = paste_face(frame, face, face_job.aligned, mask, poisson=options.poisson_blending,
                                feather_mask=soft, solver=options.poisson_solver,
                                inplace=face_job.weight >= 1.0)  # fmt: skip
            frame = fade_face(frame, result.frame, face_job.box, face_job.weight)
            methods.append(result.method)
        return slot, frame, methods

    for slot, frame, methods in pool.map(composite_frame, list(by_slot)):
        frames[slot] = frame
        stats.poisson += methods.count("poisson")
        stats.feather += len(methods) - methods.count("poisson")
    stats.faces_synced += len(jobs)
