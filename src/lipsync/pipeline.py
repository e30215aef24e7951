"""The lip-sync recipe: a video and a new audio in, a lip-synced MP4 out.

``LipSyncPipeline.__call__`` reads top to bottom as numbered steps:

1. check the inputs (errors name the offending field) and load the models, so a missing one fails fast;
2. probe the video, decode the audio, plan the loop, and take one mel window per output frame;
3. track the characters over the *source* frames the plan uses (once, not per loop pass);
4. render (lipsync.render): in bounded batches of output frames, crop each tracked face, run Wav2Lip,
   paste the mouth back (Poisson, feathered fallback), and optionally enhance the synced faces with GFPGAN;
5. encode as the frames are finished, with the new audio streamed from its file (at its own rate, up to
   48 kHz, mono or stereo) and trimmed or padded to the video;
6. return the output path with statistics.

A request is its input files plus one validated :class:`lipsync.options.LipSyncOptions`; the settings are
read from it as they are. Memory is bounded by the batch size and a few cached decode blocks, never by the
video's length; the new audio is held only as its mel spectrogram. Models are loaded on first use and kept
on the pipeline, so one pipeline serves many requests; everything about a request stays local to the call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.audio import num_audio_frames, wav2lip_mel
from lipsync.config import Settings
from lipsync.errors import InputError, LipSyncError, MediaError, MediaNotFound
from lipsync.faces import FaceBackend, create_face_backend
from lipsync.media import MediaInfo, decode_audio, probe
from lipsync.models import ModelStore, device_kind
from lipsync.options import LipSyncOptions, TrackOptions, resolve_enhance
from lipsync.render import CharacterStats, PipelineStats, RenderJob, StageTimer, render
from lipsync.request import LipSyncRequest
from lipsync.stages.enhance import FaceEnhancer, FaceRestorer, GFPGANRestorer
from lipsync.stages.frames import sources_needed
from lipsync.stages.lipsync import MouthGenerator, Wav2LipGenerator
from lipsync.stages.looping import plan_loop
from lipsync.stages.track import (
    TrackingResult,
    no_face_error,
    no_progress,
    probe_video,
    run_tracking,
    track_faces,
)
from lipsync.types import Character, LoopMode, PlanFrame, Track

__all__ = [
    "LipSyncPipeline", "LipSyncRequest", "LipSyncResult", "PipelineStats", "TrackingResult", "check_request",
]  # fmt: skip

log = logging.getLogger(__name__)

#: (stage, done, total). Stages: "prepare", "track", "lipsync", "encode".
ProgressCallback = Callable[[str, int, int], None]

AUDIO_RATE = 16000  # Wav2Lip's mel spectrogram is defined at 16 kHz
MAX_OUTPUT_AUDIO_RATE = 48000

# The planned job of a request (kept under this name for callers that inspect it).
_Job = RenderJob


@dataclass
class LipSyncResult:
    output: Path
    info: MediaInfo
    stats: PipelineStats
    tracks: list[Track]  # per character, indexed by SOURCE frame
    plan: Sequence[PlanFrame]  # output frame -> source frame(s); lazy, O(1) memory


# --- step 1: input checks -------------------------------------------------------------------------------


def check_request(request: LipSyncRequest) -> None:
    """Reject a bad request before any work, naming the field. The settings were validated when the
    options object was made; this checks the files."""
    if not isinstance(request.options, LipSyncOptions):
        raise InputError("options must be a lipsync.options.LipSyncOptions", field="options")
    if not Path(request.video).is_file():
        raise MediaNotFound(f"video file not found: {request.video}", field="video")
    if not Path(request.audio).is_file():
        raise MediaNotFound(f"audio file not found: {request.audio}", field="audio")
    out = Path(request.output)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {out.name!r}", field="output")
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}", field="output")
    check_characters(request.characters)


def check_characters(characters: Sequence[Character]) -> None:
    seen: set[str] = set()
    for ch in characters:
        if not ch.id:
            raise InputError("every character needs a non-empty id", field="characters")
        if ch.id in seen:
            raise InputError(f"character id {ch.id!r} is given twice", field="characters")
        seen.add(ch.id)
        if not ch.reference_images:
            raise InputError(f"character {ch.id!r} has no reference image", field="characters")
        for img in ch.reference_images:
            if not Path(img).is_file():
                raise MediaNotFound(
                    f"reference image for character {ch.id!r} not found: {img}", field="characters"
                )


# --- the pipeline ---------------------------------------------------------------------------------------


class LipSyncPipeline:
    """Lip-syncs videos. Models load lazily on first use (or with ``load_models``) and are reused."""

    def __init__(
        self,
        settings: Settings,
        *,
        generator: MouthGenerator | None = None,
        enhancer: FaceEnhancer | FaceRestorer | None = None,
        face_backend: FaceBackend | None = None,
        store: ModelStore | None = None,
        device: str | None = None,
    ) -> None:
        """``device`` (e.g. ``"cuda:1"``) overrides ``settings.device`` for the torch networks, so a server
        can keep one pipeline per GPU."""
        self.settings = settings
        self.device = device or settings.device
        self._store = store
        self._generator = generator
        self._enhancer = self._as_enhancer(enhancer) if enhancer is not None else None
        self._face_backend = face_backend
        self._lock = threading.RLock()

    # -- models ---------------------------------------------------------------------------------------

    @staticmethod
    def _as_enhancer(enhancer: FaceEnhancer | FaceRestorer) -> FaceEnhancer:
        return enhancer if isinstance(enhancer, FaceEnhancer) else FaceEnhancer(enhancer)

    @property
    def store(self) -> ModelStore:
        with self._lock:
            if self._store is None:
                self._store = ModelStore(self.settings)
            return self._store

    @property
    def generator_loaded(self) -> bool:
        return self._generator is not None

    @property
    def enhancer_loaded(self) -> bool:
        return self._enhancer is not None

    @property
    def face_backend_loaded(self) -> bool:
        return self._face_backend is not None

    def required_models(self, enhance: bool) -> list[str]:
        """Catalog names this pipeline would load (for download-before-run in the CLI)."""
        names = [] if self._generator is not None else [self.settings.wav2lip_model]
        if enhance and self._enhancer is None:
            names.append("gfpgan_v1.4")
        face_files_missing = self.settings.det_model is None or self.settings.rec_model is None
        if self._face_backend is None and self.settings.face_backend == "insightface" and face_files_missing:
            names.append("buffalo_l")
        return names

    def share_face_backend(self, backend: FaceBackend) -> None:
        """Use another pipeline's face backend instead of loading a second copy."""
        with self._lock:
            if self._face_backend is None:
                self._face_backend = backend

    def load_models(self, enhance: bool = True) -> None:
        self.get_face_backend()
        self.get_generator()
        if enhance:
            self.get_enhancer()

    def get_generator(self) -> MouthGenerator:
        with self._lock:
            if self._generator is None:
                from lipsync.models import load_network, resolve_device  # torch: imported here, on use

                device = resolve_device(self.device)
                name = self.settings.wav2lip_model
                path = self.store.ensure(name)
                log.info("loading %s from %s on %s", name, path, device)
                net = load_network(name, path, device=device)
                self._generator = Wav2LipGenerator(
                    net, device, batch_size=self.settings.batch_size, fp16=self.settings.fp16,
                    runtime=self.settings.cpu_generator, onnx_cache=Path(self.settings.models_dir) / "onnx",
                )  # fmt: skip
            return self._generator

    def _load_generator_beside(self) -> Future[MouthGenerator]:
        """``get_generator`` on a worker thread (its result, or its error, comes from the future)."""
        if self._generator is None:
            self.store.ensure(self.settings.wav2lip_model)
        pool = ThreadPoolExecutor(1, thread_name_prefix="lipsync-load")
        try:
            return pool.submit(self.get_generator)
        finally:
            pool.shutdown(wait=False)

    def get_enhancer(self) -> FaceEnhancer:
        with self._lock:
            if self._enhancer is None:
                from lipsync.models import load_network, resolve_device

                device = resolve_device(self.device)
                path = self.store.ensure("gfpgan_v1.4")
                log.info("loading gfpgan_v1.4 from %s on %s", path, device)
                if device.type == "cpu":
                    log.warning("GFPGAN enhancement on a CPU takes seconds per face; turn it off for speed")
                net = load_network("gfpgan_v1.4", path, device=device)
                self._enhancer = FaceEnhancer(GFPGANRestorer(net, device, fp16=self.settings.fp16))
            return self._enhancer

    def get_face_backend(self) -> FaceBackend:
        with self._lock:
            if self._face_backend is None:
                store = None if self.settings.face_backend == "dlib" else self.store
                self._face_backend = create_face_backend(self.settings, store)
            return self._face_backend

    # -- the recipe -----------------------------------------------------------------------------------

    def enhance_enabled(self, options: LipSyncOptions) -> bool:
        """The request's ``enhance`` setting on this pipeline's device (``auto``: on under CUDA only)."""
        return resolve_enhance(options.enhance, device_kind(self.device))

    def track(
        self,
        video: Path,
        characters: Sequence[Character] = (),
        options: TrackOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> TrackingResult:
        """Tracking alone, with this pipeline's face backend (the API's /face-tracking)."""
        return track_faces(
            video, characters, options or TrackOptions(), backend=self.get_face_backend(),
            settings=self.settings, progress=progress,
        )  # fmt: skip

    def __call__(self, request: LipSyncRequest, progress: ProgressCallback | None = None) -> LipSyncResult:
        """Run one request. ``progress(stage, done, total)`` may raise (e.g. JobCancelled) to stop the run;
        the partial output is then removed."""
        wall_start = time.perf_counter()
        report = progress or no_progress
        timer = StageTimer()
        stats = PipelineStats()
        options = request.options

        # 1. Check the inputs, and load the models (first request only) so a missing one fails fast.
        check_request(request)
        with timer("load_models"):
            backend = self.get_face_backend()
            # The generator (torch and its weights, seconds on a CPU) loads beside steps 2-3, which need
            # neither; its file is checked now, so a missing one still fails before any work.
            loading = self._load_generator_beside()
            enhancer = self.get_enhancer() if self.enhance_enabled(options) else None

        # 2. Probe and plan: the loop plan, and (per output frame, lazily) the mel window.
        report("prepare", 0, 1)
        with timer("prepare"):
            job = self._plan(request)
        report("prepare", 1, 1)
        stats.frames, stats.source_frames, stats.tracked_frames = len(job.plan), job.source_frames, job.needed
        stats.fps, stats.loop_mode = float(job.fps), job.mode
        stats.duration_s = stats.frames / stats.fps

        # 3. Track the characters over the source frames the plan uses (once, not once per loop pass).
        with timer("track"):
            tracks = run_tracking(job.video, job.info, backend, request.characters, options, job.needed, report)
        if not any(len(t) for t in tracks):
            raise no_face_error(request.characters, options.similarity_threshold, backend)
        for t in tracks:
            if not len(t):
                log.warning(
                    "character %r (%s) was not found; its frames pass through", t.name, t.character_id
                )
            stats.characters[t.character_id] = CharacterStats(t.character_id, t.name)

        with timer("load_models"):
            generator = loading.result()
        # 4 + 5. Generate, composite, enhance and encode, one bounded batch of output frames at a time.
        batch = int(options.wav2lip_batch_size or self.settings.batch_size or generator.batch_size)
        stats.batch_size = batch
        stats.device = str(getattr(generator, "device", "custom"))
        render(job, options, Path(request.output), tracks, generator, enhancer, batch, timer, stats, report)

        # 6. Return the result with statistics.
        stats.stage_seconds = dict(timer.seconds)
        stats.wall_seconds = time.perf_counter() - wall_start
        stats.realtime_factor = stats.duration_s / stats.wall_seconds if stats.wall_seconds > 0 else 0.0
        log.info(
            "wrote %s: %d frames, %d faces synced (%d poisson, %d feathered), %.2fx realtime",
            request.output, stats.frames, stats.faces_synced, stats.poisson, stats.feather, stats.realtime_factor,
        )  # fmt: skip
        return LipSyncResult(
            output=Path(request.output), info=job.info, stats=stats, tracks=tracks, plan=job.plan
        )

    # -- steps in detail ------------------------------------------------------------------------------

    def _plan(self, request: LipSyncRequest) -> RenderJob:
        video = Path(request.video)
        info = probe_video(video, self.settings)
        audio = Path(request.audio)
        mel, num_samples, out_rate = self._load_audio(audio)
        source_frames = 1 if info.is_image else info.num_frames
        if source_frames < 1:
            raise MediaError(f"{video.name} has no decodable video frames", field="video")
        audio_frames = num_audio_frames(num_samples, AUDIO_RATE, info.fps)
        # A still image (or a one-frame clip) is looped to the audio, whatever the loop mode says.
        mode: LoopMode = "repeat" if source_frames == 1 else request.options.loop_mode
        plan = plan_loop(source_frames, audio_frames, mode, request.options.crossfade_frames)
        needed = 1 if source_frames == 1 else sources_needed(plan)
        log.info(
            "%s: %d source frames at %s fps, audio %.2f s -> %d output frames (%s)",
            video.name, source_frames, info.fps, num_samples / AUDIO_RATE, len(plan), mode,
        )  # fmt: skip
        return RenderJob(video, info, info.fps, source_frames, mode, plan, needed, mel, audio, out_rate)

    @staticmethod
    def _load_audio(audio: Path) -> tuple[np.ndarray, int, int]:
        """(mel spectrogram, 16 kHz sample count, rate to mux at: the source's, clamped to 16-48 kHz).

        Only the mel outlives this call: the 16 kHz waveform is dropped here, and the track to mux is
        streamed from the file by ``_open_audio`` while encoding.
        """
        try:
            wav = decode_audio(audio, sample_rate=AUDIO_RATE)
            out_rate = AUDIO_RATE
            with contextlib.suppress(LipSyncError):
                native = probe(audio).audio_sample_rate
                if native:
                    out_rate = int(min(MAX_OUTPUT_AUDIO_RATE, max(AUDIO_RATE, native)))
        except MediaError as exc:
            raise exc.named("audio") from None
        return wav2lip_mel(wav, AUDIO_RATE), len(wav), out_rate
