"""The lip-sync recipe: a video and a new audio in, a lip-synced MP4 out.

``LipSyncPipeline.__call__`` reads top to bottom as numbered steps:

1. check the inputs (errors name the offending field) and load the models, so a missing one fails fast;
2. probe the video, decode the driving tracks (the main audio and any character's own stem) into their
   mels and speech spans (voice activity), plan the loop over the longest track;
3. tracking: the cached tracks of this video and settings (lipsync.stages.track_cache), or a streaming
   tracker over the *source* frames the plan uses (once, not per loop pass), run inside the render;
4. render (lipsync.render.pipelined), every stage concurrently: decode, track, crop each tracked face
   (aligned to its landmarks), run Wav2Lip on the mel of the track its character follows (silence-aware,
   lipsync.stages.silence), paste the mouth back (Poisson, feathered fallback), optionally enhance;
5. encode as the frames are finished, with the sound streamed from its file(s): the main audio, else the
   characters' stems mixed (at the highest rate, up to 48 kHz, mono or stereo), trimmed or padded to the
   video;
6. return the output path with statistics.

A request is its input files plus one validated :class:`lipsync.options.LipSyncOptions`; the settings are
read from it as they are. Memory is bounded by the render's frame budget and a few cached decode blocks,
never by the video's length; each driving track is held only as its mel and speech spans. Models are loaded
on first use and kept
on the pipeline, so one pipeline serves many requests; everything about a request stays local to the call.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lipsync.audio.vad import VoiceDetector
from lipsync.errors import InputError, MediaError
from lipsync.faces import (
    FaceBackend,
    StreamingTracker,
    TrackingOptions,
    build_references,
    face_device,
)
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
from lipsync.models import device_kind
from lipsync.models.device import single_threaded_blas
from lipsync.options import LipSyncOptions, TrackOptions
from lipsync.pipeline_models import PipelineModels
from lipsync.render import CharacterStats, PipelineStats, RenderJob, StageTimer
from lipsync.render.pipelined import Tracking, render_pipelined
from lipsync.request import LipSyncRequest, check_audio_sources
from lipsync.stages.frames import sources_needed
from lipsync.stages.looping import plan_loop
from lipsync.stages.silence import Voice, VoicePlan, load_voice, output_rate
from lipsync.stages.track import TrackingResult, no_face_error, no_progress, probe_video, track_faces
from lipsync.stages.track_cache import backend_fingerprint, cache_key
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


class LipSyncPipeline(PipelineModels):
    """Lip-syncs videos. Models load lazily on first use (or with ``load_models``) and are reused.
    One pipeline serves many requests: the models (lipsync.pipeline_models) load on first use and
    stay; everything about a request stays local to the call."""

    # -- the recipe -----------------------------------------------------------------------------------

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
            settings=self.settings, progress=progress, cache=self.track_cache,
        )  # fmt: skip

    def __call__(self, request: LipSyncRequest, progress: ProgressCallback | None = None) -> LipSyncResult:
        """Run one request. ``progress(stage, done, total)`` may raise (e.g. JobCancelled) to stop the run;
        the partial output is then removed."""
        with single_threaded_blas():
            return self._lipsync(request, progress)

    def _lipsync(self, request: LipSyncRequest, progress: ProgressCallback | None) -> LipSyncResult:
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
            # The generator (an MNN engine or torch and its weights: the slowest model to load on a CPU)
            # loads beside everything up to the render, started first; its file is checked now, so a
            # missing one still fails before any work.
            loading = self.load_generator_beside()
            backend = self.get_face_backend()
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

        # 3. Tracking: the cached tracks of this video and settings, else a streaming tracker that runs
        #    inside the render, over the source frames the plan uses (the video is decoded once for both).
        with timer("track_cache"):
            tracking, key = self._tracking(request, job, backend)
        views = tracking.views()
        for view in views:
            stats.characters[view.character_id] = CharacterStats(view.character_id, view.name)

        # 4 + 5. Track, generate, composite, enhance and encode, every stage on its own thread. The
        #        generator may still be loading: the render decodes and tracks meanwhile.
        batch = int(options.wav2lip_batch_size or self.generator_batch_size())
        stats.batch_size = batch
        output = Path(request.output)
        crop = self.device_crop(job)
        render_pipelined(
            job, options, output, tracking, loading, enhancer, batch, timer, stats, report, device_crop=crop
        )
        generator = loading.result()
        stats.device = str(getattr(generator, "device", "custom"))
        tracks = tracking.tracks if tracking.tracker is None else tracking.tracker.build()
        if tracking.leader is not None and not tracking.leader.used <= {tracking.tracker.leader()}:
            # Without characters the most prominent face is known only at the end; it changed after
            # frames were rendered with another, so render again with the final track (rare: two faces
            # of similar prominence). The result is the same as a batch tracker's.
            log.info(
                "the most prominent face changed during the render; rendering again with the final track"
            )
            stats.reset_render()
            for track in tracks:
                stats.characters[track.character_id] = CharacterStats(track.character_id, track.name)
            try:
                again = Tracking(tracks=tracks)
                render_pipelined(job, options, output, again, generator, enhancer, batch, timer, stats, report,
                                 device_crop=crop)  # fmt: skip
            except BaseException:
                output.unlink(missing_ok=True)  # the first render's file showed the wrong face
                raise
        if self.track_cache is not None and key is not None and tracking.tracker is not None:
            self.track_cache.put(key, tracks)
        for index, t in enumerate(tracks):
            if not len(t):
                log.warning(
                    "character %r (%s) was not found; its frames pass through", t.name, t.character_id
                )
            # The silence statistics (speech and silent frames, the track followed) come from the plan.
            self._voice_stats(stats.characters[t.character_id], job, index, t)

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
        return LipSyncResult(output=output, info=job.info, stats=stats, tracks=tracks, plan=job.plan)

    # -- steps in detail ------------------------------------------------------------------------------

    def device_crop(self, job: RenderJob) -> bool:
        """Whether the faces are cut and resized on the generator's device: on CUDA (the render keeps host
        crops where an occlusion masker reads them, or the generator cannot crop)."""
        return device_kind(self.device) == "cuda"

    def _tracking(
        self, request: LipSyncRequest, job: RenderJob, backend: FaceBackend
    ) -> tuple[Tracking, str | None]:
        """Known tracks from the cache, or a streaming tracker (and the key to store its tracks under)."""
        characters = list(request.characters)
        # The backend's device decides an unset sample_every (10 on a CPU, 5 on CUDA), as for `lipsync track`.
        options = TrackingOptions.from_job(request.options, face_device(backend))
        key = None
        if self.track_cache is not None:
            fingerprint = backend_fingerprint(backend, self.settings)
            key = cache_key(job.video, characters, options, fingerprint, job.needed)
            cached = self.track_cache.get(key, job.needed)
            if cached is not None and any(len(t) for t in cached):
                return Tracking(tracks=cached), key
        threshold = request.options.similarity_threshold

        def found_nobody(tracker: StreamingTracker) -> None:
            if not any(len(t) for t in tracker.build()):
                raise no_face_error(characters, threshold, backend)

        tracker = StreamingTracker(backend, build_references(backend, characters), options)
        return Tracking(tracker=tracker, on_done=found_nobody), key

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
        return RenderJob(
            video, info, info.fps, source_frames, mode, plan, needed, voice_plan, sound, out_rate, offset
        )

    @staticmethod
    def _voice_stats(cstats: CharacterStats, job: RenderJob, index: int, track: Track) -> None:
        voices = job.voices
        voice = voices.voices[voices.follows[index]]
        speech = voices.speech_frames(index)
        if not len(track) and voice.field != "audio":
            log.warning("character %r has its own track but no face: its voice is still heard, no mouth "
                        "follows it", track.character_id)  # fmt: skip
        cstats.speech_frames, cstats.silent_frames = speech, len(job.plan) - speech
        cstats.silence_mode, cstats.vad = voices.mode, voice.speech.detector
        cstats.audio = "main" if voice.field == "audio" else "own"
