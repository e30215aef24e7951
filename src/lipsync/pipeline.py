"""The lip-sync recipe: a video and a new audio in, a lip-synced MP4 out.

``LipSyncPipeline.__call__`` reads top to bottom as numbered steps:

1. check the inputs (errors name the offending field) and load the models, so a missing one fails fast;
2. probe the video, decode the driving tracks (the main audio and any character's own stem) into their
   mels and speech spans (voice activity), plan the loop over the longest track;
3. track the characters over the *source* frames the plan uses (once, not per loop pass);
4. render (lipsync.render): in bounded batches of output frames, crop each tracked face, run Wav2Lip on
   the mel of the track its character follows (silence-aware, lipsync.stages.silence), paste the mouth
   back (Poisson, feathered fallback), and optionally enhance the synced faces with GFPGAN;
5. encode as the frames are finished, with the sound streamed from its file(s): the main audio, else the
   characters' stems mixed (at the highest rate, up to 48 kHz, mono or stereo), trimmed or padded to the
   video;
6. return the output path with statistics.

A request is its input files plus one validated :class:`lipsync.options.LipSyncOptions`; the settings are
read from it as they are. Memory is bounded by the batch size and a few cached decode blocks, never by the
video's length; each driving track is held only as its mel spectrogram and speech spans. Models are loaded on first use and kept
on the pipeline, so one pipeline serves many requests; everything about a request stays local to the call.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lipsync.audio.vad import VoiceDetector, load_detector
from lipsync.config import Settings
from lipsync.errors import InputError, MediaError
from lipsync.faces import FaceBackend, create_face_backend
from lipsync.faces.pose import ROLL_LIMIT_DEG, YAW_LIMIT_DEG
from lipsync.media import (
    MediaInfo,
    MediaLimits,
    check_exists,
    check_job_media,
    check_output_file,
    check_output_frames,
    source_audio_offset,
)
from lipsync.models import ModelStore, load_network, resolve_device
from lipsync.options import EnhanceChoice, LipSyncOptions, TrackOptions, resolve_enhance, resolve_occlusion
from lipsync.render import CharacterStats, PipelineStats, RenderJob, StageTimer, render
from lipsync.request import LipSyncRequest, check_audio_sources
from lipsync.stages.enhance import FaceEnhancer, FaceRestorer, GFPGANRestorer
from lipsync.stages.frames import sources_needed
from lipsync.stages.lipsync import MouthGenerator, Wav2LipGenerator
from lipsync.stages.looping import plan_loop
from lipsync.stages.occlusion import FaceParsingMasker, OcclusionMasker
from lipsync.stages.silence import Voice, VoicePlan, load_voice, output_rate
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

#: (stage, done, total). Stages: "prepare", "track", "lipsync", "enhance" (when on), "encode".
ProgressCallback = Callable[[str, int, int], None]

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
    check_exists(request.video, "video")
    if request.audio is not None:
        check_exists(request.audio, "audio")
    out = Path(request.output)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {out.name!r}", field="output")
    check_output_file(out)  # a missing folder is created, as `track --out` does
    check_characters(request.characters)
    check_audio_sources(request.audio is not None, [(c.id, c.audio is not None) for c in request.characters])


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
            check_exists(img, "characters")
    for i, ch in enumerate(characters):
        if ch.audio is not None:
            check_exists(ch.audio, f"characters[{i}].audio")


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
        occlusion: OcclusionMasker | None = None,
    ) -> None:
        """``device`` (e.g. ``"cuda:1"``) overrides ``settings.device`` for the torch networks, so a server
        can keep one pipeline per GPU."""
        self.settings = settings
        self.device = device or settings.device
        self._store = store
        self._generator = generator
        self._enhancer = self._as_enhancer(enhancer) if enhancer is not None else None
        self._face_backend = face_backend
        self._vad: VoiceDetector | None = None
        self._occlusion = occlusion
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

    def get_vad(self) -> VoiceDetector:
        """silero-vad through onnxruntime (its file ships in the silero-vad package), else the energy VAD."""
        with self._lock:
            if self._vad is None:
                self._vad = load_detector()
            return self._vad

    def get_occlusion(self, choice: EnhanceChoice) -> OcclusionMasker | None:
        """The occlusion masker for a request's ``occlusion_mask`` setting (see ``resolve_occlusion``); a
        masker given to the constructor counts as present."""
        with self._lock:
            device = resolve_device(self.device)
            present = self._occlusion is not None or self.store.path_for("face_parsing").is_file()
            if not resolve_occlusion(choice, present, device.type):
                return None
            if self._occlusion is None:
                path = self.store.ensure("face_parsing")
                log.info("loading face_parsing from %s on %s", path, device)
                self._occlusion = FaceParsingMasker(load_network("face_parsing", path, device=device), device)
            return self._occlusion

    def get_face_backend(self) -> FaceBackend:
        with self._lock:
            if self._face_backend is None:
                store = None if self.settings.face_backend == "dlib" else self.store
                self._face_backend = create_face_backend(self.settings, store)
            return self._face_backend

    # -- the recipe -----------------------------------------------------------------------------------

    def enhance_enabled(self, options: LipSyncOptions) -> bool:
        """The request's ``enhance`` setting on this pipeline's device (``auto``: on under CUDA only)."""
        device = resolve_device(self.device).type
        on = resolve_enhance(options.enhance, device)
        if options.enhance == "auto":
            log.info(
                "enhance=auto: GFPGAN enhancement %s on %s%s", "on" if on else "off", device,
                "" if on else " (it costs seconds a face on a CPU; enhance=on forces it)",
            )  # fmt: skip
        return on

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
        stems = [(c.audio, f"characters[{i}].audio") for i, c in enumerate(request.characters) if c.audio]
        check_job_media(request.video, request.audio, MediaLimits.from_settings(self.settings), stems)
        with timer("load_models"):
            backend = self.get_face_backend()
            generator = self.get_generator()
            enhancer = self.get_enhancer() if self.enhance_enabled(options) else None
            vad = self.get_vad()
            occlusion = self.get_occlusion(options.occlusion_mask)

        # 2. Probe and plan: the loop plan, and (per output frame, lazily) the mel window.
        report("prepare", 0, 1)
        with timer("prepare"):
            job = dataclasses.replace(self._plan(request, vad), occlusion=occlusion)
        report("prepare", 1, 1)
        stats.frames, stats.source_frames, stats.tracked_frames = len(job.plan), job.source_frames, job.needed
        stats.fps, stats.loop_mode = float(job.fps), job.mode
        stats.duration_s = stats.frames / stats.fps

        # 3. Track the characters over the source frames the plan uses (once, not once per loop pass).
        with timer("track"):
            tracks = run_tracking(job.video, job.info, backend, request.characters, options, job.needed, report)
        if not any(len(t) for t in tracks):
            raise no_face_error(request.characters, options.similarity_threshold, backend)
        for index, t in enumerate(tracks):
            if not len(t):
                log.warning(
                    "character %r (%s) was not found; its frames pass through", t.name, t.character_id
                )
            stats.characters[t.character_id] = self._character_stats(job, index, t)

        # 4 + 5. Generate, composite, enhance and encode, one bounded batch of output frames at a time.
        batch = int(options.wav2lip_batch_size or self.settings.batch_size or generator.batch_size)
        stats.batch_size = batch
        stats.device = str(getattr(generator, "device", "custom"))
        render(job, options, Path(request.output), tracks, generator, enhancer, batch, timer, stats, report)

        # 6. Return the result with statistics (and a word on faces Wav2Lip was not trained for).
        for c in stats.characters.values():
            if c.frames_beyond_pose_limit:
                log.warning(
                    "%s (%s): %d of %d synced frames have an estimated yaw beyond %g or roll beyond %g "
                    "degrees; Wav2Lip is trained on near-frontal faces, expect a weaker mouth there",
                    c.name, c.id, c.frames_beyond_pose_limit, c.frames_synced, YAW_LIMIT_DEG, ROLL_LIMIT_DEG,
                )  # fmt: skip
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

    def _plan(self, request: LipSyncRequest, vad: VoiceDetector) -> RenderJob:
        video = Path(request.video)
        info = probe_video(video, self.settings)
        options = request.options
        # The driving tracks: the main audio (when given) first, then each character's own stem.
        voices: list[Voice] = []
        offset = 0.0
        if request.audio is not None:
            # A source's own sound (the video file given as the audio) is lined up with its picture.
            offset = source_audio_offset(info, Path(request.audio))
            voices.append(load_voice(Path(request.audio), "audio", vad, options, offset_s=offset))
        follows = []
        for i, ch in enumerate(request.characters):
            if ch.audio is None:
                follows.append(0)
                continue
            follows.append(len(voices))
            voices.append(load_voice(Path(ch.audio), f"characters[{i}].audio", vad, options))
        if not request.characters:
            follows = [0]  # the most prominent face follows the main audio
        source_frames = 1 if info.is_image else info.num_frames
        if source_frames < 1:
            raise MediaError(f"{video.name} has no decodable video frames", field="video")
        # The longest track sets the output's length; the loop mode extends the video to it.
        audio_frames = max(v.frames(info.fps) for v in voices)
        # A still image (or a one-frame clip) is looped to the audio, whatever the loop mode says.
        mode: LoopMode = "repeat" if source_frames == 1 else options.loop_mode
        plan = plan_loop(source_frames, audio_frames, mode, options.crossfade_frames)
        check_output_frames(len(plan), info.fps, MediaLimits.from_settings(self.settings))
        needed = 1 if source_frames == 1 else sources_needed(plan)
        log.info(
            "%s: %d source frames at %s fps, %d track(s), longest %.2f s -> %d output frames (%s), silence=%s",
            video.name, source_frames, info.fps, len(voices), max(v.duration_s for v in voices), len(plan),
            mode, options.silence,
        )  # fmt: skip
        voice_plan = VoicePlan.build(voices, follows, options.silence, info.fps, len(plan))
        # The output's sound: the main audio is the final mix when given; else the stems are mixed.
        if request.audio is not None:
            sound: Path | tuple[tuple[Path, str], ...] = voices[0].path
            out_rate = output_rate(voices[:1])
        else:
            sound = tuple((v.path, v.field) for v in voices)
            out_rate = output_rate(voices)
        return RenderJob(video, info, info.fps, source_frames, mode, plan, needed, voice_plan, sound, out_rate,
                         offset)

    @staticmethod
    def _character_stats(job: RenderJob, index: int, track: Track) -> CharacterStats:
        voices = job.voices
        voice = voices.voices[voices.follows[index]]
        speech = voices.speech_frames(index)
        if not len(track) and voice.field != "audio":
            log.warning("character %r has its own track but no face: its voice is still heard, no mouth "
                        "follows it", track.character_id)  # fmt: skip
        return CharacterStats(
            track.character_id, track.name, speech_frames=speech, silent_frames=len(job.plan) - speech,
            silence_mode=voices.mode, audio="main" if voice.field == "audio" else "own",
            vad=voice.speech.detector,
        )  # fmt: skip
