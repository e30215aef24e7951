"""The lip-sync recipe: a video and a new audio in, a lip-synced MP4 out.

``LipSyncPipeline.__call__`` reads top to bottom as numbered steps:

1. check the inputs (errors name the offending field) and load the models, so a missing one fails fast;
2. probe the video, decode the audio, plan the loop, and take one mel window per output frame;
3. track the characters over the *source* frames the plan uses (once, not per loop pass);
4. in bounded batches of output frames: render the plan frame (crossfades blended here, before generation),
   crop each tracked face, run Wav2Lip, paste the mouth back (Poisson, feathered fallback), and optionally
   enhance the synced faces with GFPGAN;
5. encode each batch as it is finished, on a worker thread (x264 overlaps the next batch), with the new
   audio streamed from its file (at its own rate, up to 48 kHz, mono or stereo) and trimmed or padded to
   the video;
6. return the output path with statistics.

Memory is bounded by the batch size and a few cached decode blocks, never by the video's length; the new
audio is held only as its mel spectrogram (the muxed track is streamed, never decoded whole). Models are
loaded on first use and kept on the pipeline, so one pipeline serves many requests; everything about a
request stays local to the call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync.audio import mel_batch, num_audio_frames, wav2lip_mel
from lipsync.config import Settings
from lipsync.errors import InputError, LipSyncError, MediaError, NoFaceFound
from lipsync.faces import FaceBackend, TrackingOptions, create_face_backend, track_characters
from lipsync.media import (
    AudioSource,
    FrameReader,
    MediaInfo,
    MediaLimits,
    VideoWriter,
    check_exists,
    check_job_media,
    check_output_file,
    check_output_frames,
    decode_audio,
    iter_frames,
    probe,
    source_audio_offset,
)
from lipsync.models import ModelStore, load_network, resolve_device
from lipsync.stages.composite import composite_face
from lipsync.stages.encode import BackgroundEncoder
from lipsync.stages.enhance import FaceEnhancer, FaceRestorer, GFPGANRestorer
from lipsync.stages.frames import point_for, render_plan_frame, sources_needed
from lipsync.stages.lipsync import MouthGenerator, Wav2LipGenerator, postprocess_face, prepare_face
from lipsync.stages.looping import plan_loop
from lipsync.types import (
    DEFAULT_PADS,
    LOOP_MODES,
    Box,
    Character,
    LoopMode,
    Pads,
    PlanFrame,
    Track,
)

log = logging.getLogger(__name__)

#: (stage, done, total). Stages: "prepare", "track", "lipsync", "enhance" (when on), "encode".
ProgressCallback = Callable[[str, int, int], None]

AUDIO_RATE = 16000  # Wav2Lip's mel spectrogram is defined at 16 kHz
MAX_OUTPUT_AUDIO_RATE = 48000
# Frames held at once are capped by bytes as well as by the batch size, so 4K input cannot exhaust memory.
FRAME_BUFFER_BYTES = 256 * 1024**2
READER_BLOCK_BYTES = 32 * 1024**2
# Poisson blending is single-threaded OpenCV work; a few threads keep it off the critical path on big CPUs.
COMPOSITE_THREADS = max(1, min(8, os.cpu_count() or 1))


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# --- request and result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LipSyncRequest:
    """One lip-sync job on local files. Defaults follow the product brief."""

    video: Path
    audio: Path
    output: Path
    characters: tuple[Character, ...] = ()
    loop_mode: LoopMode = "crossfade"
    crossfade_frames: int = 10
    enhance: bool = True
    similarity_threshold: float | None = None  # None: the face backend's documented default
    temporal_smoothing: float = 0.3
    pads: Pads = DEFAULT_PADS
    batch_size: int | None = None  # None: settings.batch_size, else the generator's per-device default
    sample_every: int | None = None  # detection stride; None: the tracker's default
    poisson: bool = True
    crf: int = 18
    preset: str = "medium"


@dataclass
class CharacterStats:
    id: str
    name: str
    frames_synced: int = 0
    frames_passed_through: int = 0


@dataclass
class PipelineStats:
    frames: int = 0
    source_frames: int = 0
    tracked_frames: int = 0  # source frames the tracker read (those the plan uses)
    fps: float = 0.0
    duration_s: float = 0.0
    loop_mode: str = ""
    device: str = ""
    batch_size: int = 0
    characters: dict[str, CharacterStats] = field(default_factory=dict)
    faces_synced: int = 0
    poisson: int = 0
    feather: int = 0
    enhanced: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    realtime_factor: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["characters"] = [asdict(c) for c in self.characters.values()]
        out["stage_seconds"] = {k: round(v, 4) for k, v in self.stage_seconds.items()}
        # Frames per second of each stage; tracking is per source frame read, every other stage per output frame.
        out["stage_fps"] = {
            k: round((self.tracked_frames if k == "track" else self.frames) / v, 2)
            for k, v in self.stage_seconds.items()
            if v > 0 and self.frames and k not in ("load_models", "encode_wait")
        }
        return out


@dataclass
class LipSyncResult:
    output: Path
    info: MediaInfo
    stats: PipelineStats
    tracks: list[Track]  # per character, indexed by SOURCE frame
    plan: Sequence[PlanFrame]  # output frame -> source frame(s); lazy, O(1) memory


@dataclass(frozen=True)
class TrackingResult:
    info: MediaInfo
    tracks: list[Track]


class _StageTimer:
    """Adds up wall seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class _Job:
    """What step 2 learns about one request; everything later reads it."""

    video: Path
    info: MediaInfo
    fps: Fraction
    source_frames: int
    mode: LoopMode
    plan: Sequence[PlanFrame]
    needed: int  # leading source frames the plan uses (tracking reads only these)
    mel: np.ndarray  # (80, T) for the whole new audio
    # The track to mux is re-read from this file while encoding, never held: a 3-hour dub at 48 kHz
    # stereo would be GBs.
    audio: Path
    out_rate: int
    audio_offset: float = 0.0  # source_audio_offset: nonzero when the audio is the video's own sound


@dataclass(frozen=True)
class _FaceJob:
    slot: int  # index of the frame within the current batch
    character: int  # index into tracks
    box: Box  # padded integer box inside the frame
    landmarks: np.ndarray


# --- step 1: input checks -------------------------------------------------------------------------------


def check_request(request: LipSyncRequest) -> None:
    """Reject a bad request before any work, naming the field."""
    check_exists(request.video, "video")
    check_exists(request.audio, "audio")
    out = Path(request.output)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {out.name!r}", field="output")
    check_output_file(out)  # a missing folder is created, as `track --out` does
    if request.loop_mode not in LOOP_MODES:
        raise InputError(
            f"loop_mode must be one of {', '.join(LOOP_MODES)}, got {request.loop_mode!r}", field="loop_mode"
        )
    if not 0 <= request.crossfade_frames <= 1000:
        raise InputError(
            f"crossfade_frames must be 0..1000, got {request.crossfade_frames}", field="crossfade_frames"
        )
    thr = request.similarity_threshold
    if thr is not None and not (0.0 <= thr <= 1.0 and math.isfinite(thr)):
        raise InputError(
            f"similarity_threshold must be between 0 and 1, got {thr}", field="similarity_threshold"
        )
    if not 0.0 <= request.temporal_smoothing <= 1.0:
        raise InputError(
            f"temporal_smoothing must be between 0 and 1, got {request.temporal_smoothing}",
            field="temporal_smoothing",
        )
    if len(request.pads) != 4 or any(int(p) != p or p < 0 or p > 1000 for p in request.pads):
        raise InputError(
            f"pads must be 4 non-negative integers (top, bottom, left, right), got {list(request.pads)}",
            field="pads",
        )
    if request.batch_size is not None and not 1 <= request.batch_size <= 1024:
        raise InputError(f"batch_size must be 1..1024, got {request.batch_size}", field="batch_size")
    if request.sample_every is not None and request.sample_every < 1:
        raise InputError(f"sample_every must be >= 1, got {request.sample_every}", field="sample_every")
    if not 0 <= request.crf <= 51:
        raise InputError(f"crf must be 0..51, got {request.crf}", field="crf")
    seen: set[str] = set()
    for ch in request.characters:
        if not ch.id:
            raise InputError("every character needs a non-empty id", field="characters")
        if ch.id in seen:
            raise InputError(f"character id {ch.id!r} is given twice", field="characters")
        seen.add(ch.id)
        if not ch.reference_images:
            raise InputError(f"character {ch.id!r} has no reference image", field="characters")
        for img in ch.reference_images:
            check_exists(img, "characters")


def _with_field(exc: LipSyncError, name: str) -> LipSyncError:
    if exc.field is None:
        exc.field = name
    return exc


# --- helpers shared with the API's /face-tracking -------------------------------------------------------


def _probe_video(path: Path, settings: Settings) -> MediaInfo:
    try:
        return probe(path, MediaLimits.from_settings(settings)).require_video()
    except MediaError as exc:
        raise _with_field(exc, "video") from None


def _tracking_options(
    similarity_threshold: float, temporal_smoothing: float, pads: Pads, sample_every: int | None
) -> TrackingOptions:
    kwargs: dict = {
        "similarity_threshold": similarity_threshold,
        "temporal_smoothing": temporal_smoothing,
        "pads": tuple(pads),
    }
    if sample_every is not None:
        kwargs["sample_every"] = sample_every
    return TrackingOptions(**kwargs)


def _run_tracking(
    video: Path,
    info: MediaInfo,
    backend: FaceBackend,
    characters: Sequence[Character],
    options: TrackingOptions,
    num_frames: int,
    report: ProgressCallback,
) -> list[Track]:
    frames = itertools.islice(iter_frames(video, info=info), num_frames)
    return track_characters(
        frames,
        backend,
        list(characters),
        options,
        num_frames=num_frames,
        progress=lambda done, total: report("track", done, total),
    )


def _no_face_error(characters: Sequence[Character], threshold: float, backend: FaceBackend) -> NoFaceFound:
    if not characters:
        return NoFaceFound("no face was found anywhere in the video", field="video")
    names = ", ".join(f"{c.name!r} ({c.id})" for c in characters)
    lower = max(0.0, round(threshold - 0.1, 2))
    return NoFaceFound(
        f"none of the requested characters was found in the video: {names}, at similarity_threshold="
        f"{threshold:.2f} ({getattr(backend, 'name', 'face')} backend). Try lowering similarity_threshold "
        f"(e.g. to {lower:.2f}) or use a clearer, frontal reference image.",
        field="characters",
    )


def track_faces(
    video: Path,
    characters: Sequence[Character],
    *,
    backend: FaceBackend,
    settings: Settings,
    similarity_threshold: float | None = None,
    temporal_smoothing: float = 0.3,
    pads: Pads = DEFAULT_PADS,
    sample_every: int | None = None,
    progress: ProgressCallback | None = None,
) -> TrackingResult:
    """Track characters over a whole video (the API's /face-tracking). Raises NoFaceFound when none is seen."""
    report = progress or _no_progress
    info = _probe_video(Path(video), settings)
    threshold = backend.default_threshold if similarity_threshold is None else similarity_threshold
    options = _tracking_options(threshold, temporal_smoothing, pads, sample_every)
    tracks = _run_tracking(Path(video), info, backend, characters, options, info.num_frames, report)
    if not any(len(t) for t in tracks):
        raise _no_face_error(characters, threshold, backend)
    return TrackingResult(info, tracks)


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
                device = resolve_device(self.device)
                name = self.settings.wav2lip_model
                path = self.store.ensure(name)
                log.info("loading %s from %s on %s", name, path, device)
                net = load_network(name, path, device=device)
                self._generator = Wav2LipGenerator(
                    net, device, batch_size=self.settings.batch_size, fp16=self.settings.fp16
                )
            return self._generator

    def get_enhancer(self) -> FaceEnhancer:
        with self._lock:
            if self._enhancer is None:
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

    def track(
        self,
        video: Path,
        characters: Sequence[Character] = (),
        *,
        similarity_threshold: float | None = None,
        temporal_smoothing: float = 0.3,
        pads: Pads = DEFAULT_PADS,
        sample_every: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> TrackingResult:
        """Tracking alone, with this pipeline's face backend (the API's /face-tracking)."""
        return track_faces(
            video,
            characters,
            backend=self.get_face_backend(),
            settings=self.settings,
            similarity_threshold=similarity_threshold,
            temporal_smoothing=temporal_smoothing,
            pads=pads,
            sample_every=sample_every,
            progress=progress,
        )

    def __call__(self, request: LipSyncRequest, progress: ProgressCallback | None = None) -> LipSyncResult:
        """Run one request. ``progress(stage, done, total)`` may raise (e.g. JobCancelled) to stop the run;
        the partial output is then removed."""
        wall_start = time.perf_counter()
        report = progress or _no_progress
        timer = _StageTimer()
        stats = PipelineStats()

        # 1. Check the inputs, and load the models (first request only) so a missing one fails fast.
        check_request(request)
        check_job_media(request.video, request.audio, MediaLimits.from_settings(self.settings))
        with timer("load_models"):
            backend = self.get_face_backend()
            generator = self.get_generator()
            enhancer = self.get_enhancer() if request.enhance else None

        # 2. Probe and plan: the loop plan, and (per output frame, lazily) the mel window.
        report("prepare", 0, 1)
        with timer("prepare"):
            job = self._plan(request)
        report("prepare", 1, 1)
        stats.frames, stats.source_frames, stats.tracked_frames = len(job.plan), job.source_frames, job.needed
        stats.fps, stats.loop_mode = float(job.fps), job.mode
        stats.duration_s = stats.frames / stats.fps

        # 3. Track the characters over the source frames the plan uses (once, not once per loop pass).
        threshold = (
            backend.default_threshold
            if request.similarity_threshold is None
            else request.similarity_threshold
        )
        options = _tracking_options(threshold, request.temporal_smoothing, request.pads, request.sample_every)
        with timer("track"):
            tracks = _run_tracking(
                job.video, job.info, backend, request.characters, options, job.needed, report
            )
        if not any(len(t) for t in tracks):
            raise _no_face_error(request.characters, threshold, backend)
        for t in tracks:
            if not len(t):
                log.warning(
                    "character %r (%s) was not found; its frames pass through", t.name, t.character_id
                )
            stats.characters[t.character_id] = CharacterStats(t.character_id, t.name)

        # 4 + 5. Generate, composite, enhance and encode, one bounded batch of output frames at a time.
        self._render(job, request, tracks, generator, enhancer, timer, stats, report)

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

    def _plan(self, request: LipSyncRequest) -> _Job:
        video = Path(request.video)
        info = _probe_video(video, self.settings)
        audio = Path(request.audio)
        offset = source_audio_offset(info, audio)
        mel, num_samples, out_rate = self._load_audio(audio, offset)
        source_frames = 1 if info.is_image else info.num_frames
        if source_frames < 1:
            raise MediaError(f"{video.name} has no decodable video frames", field="video")
        audio_frames = num_audio_frames(num_samples, AUDIO_RATE, info.fps)
        # A still image (or a one-frame clip) is looped to the audio, whatever the loop mode says.
        mode: LoopMode = "repeat" if source_frames == 1 else request.loop_mode
        plan = plan_loop(source_frames, audio_frames, mode, request.crossfade_frames)
        check_output_frames(len(plan), info.fps, MediaLimits.from_settings(self.settings))
        needed = 1 if source_frames == 1 else sources_needed(plan)
        log.info(
            "%s: %d source frames at %s fps, audio %.2f s -> %d output frames (%s)",
            video.name, source_frames, info.fps, num_samples / AUDIO_RATE, len(plan), mode,
        )  # fmt: skip
        return _Job(video, info, info.fps, source_frames, mode, plan, needed, mel, audio, out_rate, offset)

    def _render(
        self, job: _Job, request: LipSyncRequest, tracks: list[Track], generator: MouthGenerator,
        enhancer: FaceEnhancer | None, timer: _StageTimer, stats: PipelineStats, report: ProgressCallback,
    ) -> None:  # fmt: skip
        """Steps 4 and 5: output frames in batches, each synced, enhanced and encoded before the next."""
        output = Path(request.output)
        num_out = len(job.plan)
        batch = int(request.batch_size or self.settings.batch_size or generator.batch_size)
        stats.batch_size = batch
        stats.device = str(getattr(generator, "device", "custom"))
        width, height = job.info.display_width, job.info.display_height
        chunk = max(1, min(batch, FRAME_BUFFER_BYTES // max(1, width * height * 3)))
        # Written under a temporary name and renamed at the end: a failed run leaves no half-written output.
        partial = output.with_name(f".{output.stem}.partial{output.suffix}")
        encoder: BackgroundEncoder | None = None
        try:
            with contextlib.ExitStack() as stack:
                get_frame = self._frame_source(job.video, job.info, stack)
                # Entered before the writer, so the stack closes it after the writer (whose close reads
                # the rest of the audio it needs), on success and on error alike.
                audio = stack.enter_context(self._open_audio(job.audio, job.out_rate, job.audio_offset))
                writer = VideoWriter(
                    partial, width, height, job.fps, crf=request.crf, preset=request.preset, audio=audio,
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
                    jobs = self._face_jobs(job.plan, start, stop, tracks, request.pads, width, height, stats)
                    if jobs:
                        self._sync_faces(
                            frames, jobs, start, job, generator, batch, request, timer, stats, pool
                        )
                        if enhancer is not None:
                            with timer("enhance"):
                                stats.enhanced += enhancer(frames, [(j.slot, j.landmarks) for j in jobs])
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

    @staticmethod
    def _load_audio(audio: Path, offset_s: float = 0.0) -> tuple[np.ndarray, int, int]:
        """(mel spectrogram, 16 kHz sample count, rate to mux at: the source's, clamped to 16-48 kHz).

        Only the mel outlives this call: the 16 kHz waveform is dropped here, and the track to mux is
        streamed from the file by ``_open_audio`` while encoding.
        """
        try:
            wav = decode_audio(audio, sample_rate=AUDIO_RATE, offset_s=offset_s)
            out_rate = AUDIO_RATE
            with contextlib.suppress(LipSyncError):
                native = probe(audio).audio_sample_rate
                if native:
                    out_rate = int(min(MAX_OUTPUT_AUDIO_RATE, max(AUDIO_RATE, native)))
        except MediaError as exc:
            raise _with_field(exc, "audio") from None
        return wav2lip_mel(wav, AUDIO_RATE), len(wav), out_rate

    @staticmethod
    def _open_audio(audio: Path, rate: int, offset_s: float = 0.0) -> AudioSource:
        """The new audio, streamed at ``rate`` for the writer; mono or stereo as the source (surround is
        folded to stereo). The caller closes it."""
        try:
            return AudioSource.open(audio, rate, mono=False, offset_s=offset_s)
        except MediaError as exc:
            raise _with_field(exc, "audio") from None

    @staticmethod
    def _frame_source(
        video: Path, info: MediaInfo, stack: contextlib.ExitStack
    ) -> Callable[[int], np.ndarray]:
        if info.is_image:
            still = next(iter(iter_frames(video, info=info)))
            return lambda _i: still
        # Three cached blocks: a crossfade reads the clip's tail and head alternately (the tail may straddle
        # two blocks), a pingpong turn reads backwards. Blocks are sized to about 32 MB of decoded frames.
        frame_bytes = max(1, info.display_width * info.display_height * 3)
        block = int(min(32, max(4, READER_BLOCK_BYTES // frame_bytes)))
        reader = stack.enter_context(FrameReader(video, info=info, block=block, max_blocks=3))
        return reader.get

    @staticmethod
    def _face_jobs(
        plan: Sequence, start: int, stop: int, tracks: Sequence[Track], pads: Pads, width: int, height: int,
        stats: PipelineStats,
    ) -> list[_FaceJob]:  # fmt: skip
        jobs: list[_FaceJob] = []
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
                jobs.append(_FaceJob(slot, ci, box, point.landmarks))
        return jobs

    @staticmethod
    def _sync_faces(
        frames: list[np.ndarray], jobs: list[_FaceJob], start: int, job: _Job, generator: MouthGenerator,
        batch: int, request: LipSyncRequest, timer: _StageTimer, stats: PipelineStats, pool: Executor,
    ) -> None:  # fmt: skip
        """Crop, generate and composite every face of one batch of output frames (in place in ``frames``)."""
        with timer("prepare_faces"):
            faces = np.stack([prepare_face(frames[j.slot], j.box) for j in jobs])
            mels = mel_batch(job.mel, [start + j.slot for j in jobs], job.fps)
        with timer("generate"):
            generated = np.concatenate(
                [generator(faces[k : k + batch], mels[k : k + batch]) for k in range(0, len(jobs), batch)]
            )
        by_slot: dict[int, list[tuple[_FaceJob, np.ndarray]]] = {}
        for face_job, face in zip(jobs, generated, strict=True):
            by_slot.setdefault(face_job.slot, []).append((face_job, face))

        def composite_frame(slot: int) -> tuple[int, np.ndarray, list[str]]:
            # Faces of one frame go one after the other (they may overlap); frames are independent.
            frame, methods = frames[slot], []
            for face_job, face in by_slot[slot]:
                result = composite_face(
                    frame, postprocess_face(face, face_job.box), face_job.box, poisson=request.poisson
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
