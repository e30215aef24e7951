"""The pipelined renderer against the serial one, and its behaviour on errors and cancellation.

The serial reference is today's path: the batch tracker over the plan's source frames, then
lipsync.render.serial.render. The pipelined path is LipSyncPipeline itself (streaming tracker inside the
staged engine). Both encode with the same settings, so their decoded frames must agree.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import Settings
from lipsync.errors import CorruptMedia, EncodeError, FaceError, InputError, JobCancelled, ModelError
from lipsync.faces import TrackingOptions, build_references
from lipsync.faces.tracking import track_characters_batch
from lipsync.media import iter_frames
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from lipsync.render import CharacterStats, PipelineStats, StageTimer, serial
from lipsync.types import Box, Character
from pipeline_fixtures import (
    ColorFaceBackend,
    FaceSpec,
    IdentityGenerator,
    MouthMarkGenerator,
    decode_frames,
    moving_box,
    write_reference_image,
    write_speechlike_wav,
    write_synthetic_video,
)

W, H, FPS = 256, 192, 25
PADS = (0, 20, 0, 0)
RED = FaceSpec("red", moving_box(40, 30, 64, 84, dx=0.6, dy=0.2))
BLUE = FaceSpec("blue", moving_box(150, 40, 60, 80, dx=-0.4))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pipelined")
    return {
        "two": write_synthetic_video(d / "two.mp4", [RED, BLUE], width=W, height=H, fps=FPS, seconds=2.0),
        "audio_2s": write_speechlike_wav(d / "a2.wav", 2.0),
        "audio_5s": write_speechlike_wav(d / "a5.wav", 5.0),
        "red_ref": write_reference_image(d / "red.png", "red"),
        "blue_ref": write_reference_image(d / "blue.png", "blue"),
    }


def _options(**kw) -> LipSyncOptions:
    return LipSyncOptions(**{"enhance": "off", "pads": list(PADS), "crf": 0, **kw})


def _lipsync_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("lipsync-")}


def serial_reference(video, audio, out, generator, characters, options) -> list[np.ndarray]:
    """Today's path: the batch tracker, then the serial renderer."""
    pipe = LipSyncPipeline(Settings(), generator=generator, face_backend=ColorFaceBackend())
    request = LipSyncRequest(video, audio, out, tuple(characters), options)
    job = pipe._plan(request, pipe.get_vad())
    backend = ColorFaceBackend()
    frames = itertools.islice(iter_frames(video, info=job.info), job.needed)
    refs = build_references(backend, list(characters))
    tracks = track_characters_batch(
        frames, backend, options=TrackingOptions.from_job(options), references=refs
    )
    stats = PipelineStats()
    for t in tracks:
        stats.characters[t.character_id] = CharacterStats(t.character_id, t.name)
    batch = options.wav2lip_batch_size or 8
    serial.render(job, options, out, tracks, generator, None, batch, StageTimer(), stats, lambda *a: None)
    return decode_frames(out)


def pipelined(video, audio, out, generator, characters, options, backend=None, progress=None):
    pipe = LipSyncPipeline(Settings(), generator=generator, face_backend=backend or ColorFaceBackend())
    return pipe(LipSyncRequest(video, audio, out, tuple(characters), options), progress=progress)


@pytest.mark.parametrize(
    ("audio", "loop_mode", "chars", "batch"),
    [
        ("audio_2s", "none", ("red", "blue"), 8),
        ("audio_5s", "crossfade", ("blue",), 16),
        ("audio_5s", "pingpong", (), 5),
        ("audio_5s", "repeat", ("red",), 7),
    ],
)
def test_pipelined_output_equals_the_serial_output(tmp_path, media, audio, loop_mode, chars, batch):
    characters = [Character(c, c.title(), (media[f"{c}_ref"],)) for c in chars]
    options = _options(loop_mode=loop_mode, wav2lip_batch_size=batch)
    ref = serial_reference(
        media["two"], media[audio], tmp_path / "serial.mp4", MouthMarkGenerator(), characters, options
    )
    result = pipelined(
        media["two"], media[audio], tmp_path / "piped.mp4", MouthMarkGenerator(), characters, options
    )
    out = decode_frames(result.output)
    assert len(out) == len(ref) == result.stats.frames
    worst = max(
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(out, ref, strict=True)
    )
    assert worst <= 1, f"pipelined differs from serial by {worst} grey levels"
    assert result.stats.faces_synced > 0


def test_leading_face_changing_midway_renders_again_like_the_batch_tracker(tmp_path, media, caplog):
    # No characters: a small face alone at first, then a big one for the rest of the clip. While
    # rendering the first frames the small face leads; at the end the big one is the most prominent.
    small = FaceSpec("red", lambda i: Box(20, 20, 70, 80))
    big = FaceSpec("blue", lambda i: Box(120, 30, 230, 170) if i >= 20 else None)
    video = write_synthetic_video(
        tmp_path / "swap.mp4", [small, big], width=W, height=H, fps=FPS, seconds=3.0
    )
    audio = write_speechlike_wav(tmp_path / "a3.wav", 3.0)
    options = _options(loop_mode="none", wav2lip_batch_size=4)
    ref = serial_reference(video, audio, tmp_path / "serial.mp4", MouthMarkGenerator(), [], options)
    with caplog.at_level("INFO", logger="lipsync.pipeline"):
        result = pipelined(video, audio, tmp_path / "piped.mp4", MouthMarkGenerator(), [], options)
    assert "rendering again" in caplog.text  # the speculative render with the small face was discarded
    assert all(p.box.iou(Box(120, 30, 230, 170)) > 0.7 for p in result.tracks[0].points.values())
    assert result.stats.characters["face"].frames_synced == 55  # frames 20..74: the big face only
    out = decode_frames(result.output)
    assert (
        max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(out, ref, strict=True))
        <= 1
    )


# --- errors and cancellation ----------------------------------------------------------------------------


class _FailingBackend(ColorFaceBackend):
    def detect(self, frame_bgr):
        if self.detect_calls >= 6:
            raise FaceError("the face detector failed")
        return super().detect(frame_bgr)


class _FailingGenerator(IdentityGenerator):
    def __call__(self, faces, mels):
        if len(self.calls) >= 2:
            raise ModelError("Wav2Lip failed")
        return super().__call__(faces, mels)


def _inject(stage: str, monkeypatch):
    """(error type, generator, backend, enhance) with an error placed in ``stage``."""
    import lipsync.render.stages as stages_mod
    from lipsync.media import VideoWriter

    generator, backend, enhancer = IdentityGenerator(), ColorFaceBackend(), None
    if stage == "decode":
        real = stages_mod.iter_frames

        def broken(*a, **kw):
            for i, frame in enumerate(real(*a, **kw)):
                if i == 30:
                    raise CorruptMedia("frame 30 could not be decoded")
                yield frame

        monkeypatch.setattr(stages_mod, "iter_frames", broken)
        return CorruptMedia, generator, backend, enhancer
    if stage == "track":
        return FaceError, generator, _FailingBackend(), enhancer
    if stage == "frames":
        real_jobs = stages_mod.face_jobs

        def jobs(plan, start, *a):
            if start >= 16:
                raise InputError("a face job could not be made")
            return real_jobs(plan, start, *a)

        monkeypatch.setattr(stages_mod, "face_jobs", jobs)
        return InputError, generator, backend, enhancer
    if stage == "generate":
        return ModelError, _FailingGenerator(), backend, enhancer
    if stage == "composite":
        calls = []
        real_comp = stages_mod.sync_composite

        def comp(*a):
            calls.append(1)
            if len(calls) > 2:
                raise InputError("compositing failed")
            return real_comp(*a)

        monkeypatch.setattr(stages_mod, "sync_composite", comp)
        return InputError, generator, backend, enhancer
    if stage == "enhance":

        def enhance(frames, faces):
            raise ModelError("GFPGAN failed")

        return ModelError, generator, backend, enhance
    assert stage == "encode"
    real_write = VideoWriter.write

    def write(self, frame):
        if self.frames_written >= 20:
            raise EncodeError("the encoder failed")
        return real_write(self, frame)

    monkeypatch.setattr(VideoWriter, "write", write)
    return EncodeError, generator, backend, enhancer


@pytest.mark.parametrize("stage", ["decode", "track", "frames", "generate", "composite", "enhance", "encode"])
def test_an_error_in_each_stage_surfaces_typed_with_no_partial_file_and_no_thread_left(
    tmp_path, media, monkeypatch, stage
):
    error, generator, backend, enhancer = _inject(stage, monkeypatch)
    pipe = LipSyncPipeline(Settings(), generator=generator, face_backend=backend)
    if enhancer is not None:
        pipe._enhancer = enhancer
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    options = _options(loop_mode="none", wav2lip_batch_size=8, enhance="on" if enhancer else "off")
    before = _lipsync_threads()
    with pytest.raises(error):
        pipe(LipSyncRequest(media["two"], media["audio_2s"], out_dir / "o.mp4", (), options))
    assert list(out_dir.iterdir()) == []  # neither the output nor its partial file
    assert _lipsync_threads() == before


def test_cancellation_mid_run_stops_within_a_second(tmp_path, media):
    class SlowGenerator(IdentityGenerator):
        def __call__(self, faces, mels):
            time.sleep(0.05)
            return super().__call__(faces, mels)

    asked: list[float] = []

    def progress(stage: str, done: int, total: int) -> None:
        if asked:
            raise JobCancelled("cancelled by the user")
        if stage == "lipsync" and done >= 16:
            asked.append(time.monotonic())
            raise JobCancelled("cancelled by the user")

    before = _lipsync_threads()
    with pytest.raises(JobCancelled):
        pipelined(
            media["two"],
            media["audio_5s"],
            tmp_path / "o.mp4",
            SlowGenerator(2),
            [],
            _options(wav2lip_batch_size=2),
            progress=progress,
        )
    assert asked and time.monotonic() - asked[0] < 1.0
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".*partial*"))
    assert _lipsync_threads() == before


# --- memory ---------------------------------------------------------------------------------------------

_RSS_CHILD = """
import sys
sys.path.insert(0, {tests!r})
sys.path.append({bench!r})  # after the standard library, which no benchmark may shadow
from pathlib import Path
from _common import peak_rss_mb
from lipsync.config import Settings
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from pipeline_fixtures import ColorFaceBackend, IdentityGenerator
pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(16), face_backend=ColorFaceBackend())
opts = LipSyncOptions(enhance="off", loop_mode={mode!r}, wav2lip_batch_size=16)
result = pipe(LipSyncRequest(Path({video!r}), Path({audio!r}), Path({out!r}), options=opts))
print(result.stats.frames, peak_rss_mb())
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "video_s", "audio_s"), [("none", (3, 30), (3, 30)), ("crossfade", (3, 3), (10, 100))]
)
def test_peak_rss_is_flat_in_the_length_of_the_render(tmp_path, mode, video_s, audio_s):
    """A long synthetic clip (or a long loop of a short one) with a tiny generator double: the pipelined
    render's peak RSS does not follow the number of frames (10x here). Both loop cases loop, so both open
    the second decoder that loop passes read from (a fixed cost, not a growth). The short run must be long
    enough to fill the pipeline's bounded buffers once: 125 frames did not (221 MB, against 267 MB at
    1250 frames and 266 MB at 2500), and that ramp read as growth."""
    import subprocess
    import sys

    peaks = {}
    for v_s, a_s in zip(video_s, audio_s, strict=True):
        video = write_synthetic_video(
            tmp_path / f"v{v_s}.mp4", [FaceSpec("red", moving_box(30, 20, 60, 80, dx=0.02))],
            width=320, height=240, seconds=v_s,
        )  # fmt: skip
        audio = write_speechlike_wav(tmp_path / f"a{a_s}.wav", a_s)
        tests = Path(__file__).parent
        code = _RSS_CHILD.format(tests=str(tests), bench=str(tests.parent / "benchmarks"), mode=mode,
                                 video=str(video), audio=str(audio), out=str(tmp_path / f"o{a_s}.mp4"))  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        frames, peak = proc.stdout.split()[-2:]
        peaks[int(frames)] = float(peak)
    short, long_ = sorted(peaks)
    assert long_ >= 9 * short
    assert peaks[long_] <= 1.15 * peaks[short], peaks


# --- Wav2Lip forwards side by side (generation_plan) -----------------------------------------------------


class _CpuMouthMark(MouthMarkGenerator):
    """The mouth-mark double claiming a CPU device, so the render runs it as side-by-side forwards; each
    call sleeps a random while, so parts finish out of order."""

    device = type("Device", (), {"type": "cpu"})()

    def __init__(self, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__(batch_size)
        self.rng = np.random.default_rng(seed)
        self.threads: set[str] = set()

    def __call__(self, faces, mels):
        self.threads.add(threading.current_thread().name)
        time.sleep(float(self.rng.uniform(0.0, 0.03)))
        return super().__call__(faces, mels)


def test_generation_plan_splits_cpu_forwards_only():
    from lipsync.stages.lipsync import batch_parts, generation_plan

    assert batch_parts(16, 2) == [(0, 8), (8, 16)] and batch_parts(5, 2) == [(0, 2), (2, 5)]
    assert batch_parts(1, 2) == [(0, 1)] and batch_parts(7, 1) == [(0, 7)]

    cpu = _CpuMouthMark()
    assert generation_plan(cpu, cores=2) == (2, 1)
    assert generation_plan(cpu, cores=16) == (2, 8)
    assert generation_plan(cpu, cores=1) == (1, 1)
    assert generation_plan(MouthMarkGenerator(), cores=8) == (1, None)  # no device: a test double
    cuda = _CpuMouthMark()
    cuda.device = type("Device", (), {"type": "cuda"})()
    assert generation_plan(cuda, cores=8) == (1, None)
    ort = _CpuMouthMark()
    ort.runtime = "onnxruntime"  # side by side, each session with the threads it was made with
    assert generation_plan(ort, cores=8) == (2, None)
    ort.device = "cpu"  # a device given as a string
    assert generation_plan(ort, cores=2) == (2, None)


@pytest.mark.parametrize(("chars", "batch"), [(("red", "blue"), 8), ((), 5)])
def test_side_by_side_forwards_give_the_serial_output_in_order(tmp_path, media, monkeypatch, chars, batch):
    import lipsync.render.stages as stages_mod

    monkeypatch.setattr(stages_mod, "generation_plan", lambda g: (2, None))  # whatever the machine
    characters = [Character(c, c.title(), (media[f"{c}_ref"],)) for c in chars]
    options = _options(loop_mode="crossfade", wav2lip_batch_size=batch)
    ref = serial_reference(
        media["two"], media["audio_5s"], tmp_path / "s.mp4", MouthMarkGenerator(), characters, options
    )
    generator = _CpuMouthMark(batch)
    result = pipelined(media["two"], media["audio_5s"], tmp_path / "p.mp4", generator, characters, options)
    out = decode_frames(result.output)
    assert len(out) == len(ref)
    worst = max(
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(out, ref, strict=True)
    )
    assert worst <= 1, f"side-by-side forwards differ from serial by {worst} grey levels"
    assert {t.rsplit("_", 1)[0] for t in generator.threads} == {"lipsync-generate-worker"}
    assert len(generator.threads) == 2
    assert max(shape[0] for shape, _ in generator.calls) <= batch


def test_an_error_in_a_side_by_side_forward_surfaces_typed_with_no_thread_left(tmp_path, media, monkeypatch):
    import lipsync.render.stages as stages_mod

    class Failing(_CpuMouthMark):
        def __call__(self, faces, mels):
            if len(self.calls) >= 3:
                raise ModelError("Wav2Lip failed")
            return super().__call__(faces, mels)

    monkeypatch.setattr(stages_mod, "generation_plan", lambda g: (2, None))
    before = _lipsync_threads()
    with pytest.raises(ModelError):
        pipelined(
            media["two"],
            media["audio_5s"],
            tmp_path / "o.mp4",
            Failing(8),
            [],
            _options(wav2lip_batch_size=8),
        )
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".*partial*"))
    assert _lipsync_threads() == before


def test_the_real_cpu_generator_side_by_side_matches_the_serial_render(tmp_path, media):
    """Seeded random Wav2Lip of the real layout, folded, on this CPU: two single-threaded forwards per
    batch against the serial renderer's one forward with all threads (float order may differ by a level)."""
    import torch

    from lipsync.models import load_network
    from lipsync.stages.lipsync import Wav2LipGenerator, generation_plan
    from pipeline_fixtures import write_random_wav2lip

    ckpt = write_random_wav2lip(tmp_path / "w.pth", seed=1)
    generator = Wav2LipGenerator(load_network("wav2lip_gan", ckpt, device="cpu"), "cpu", batch_size=8)
    assert generation_plan(generator, cores=2) == (2, 1)
    options = _options(loop_mode="none", wav2lip_batch_size=8)
    threads = torch.get_num_threads()
    ref = serial_reference(media["two"], media["audio_2s"], tmp_path / "s.mp4", generator, [], options)
    result = pipelined(media["two"], media["audio_2s"], tmp_path / "p.mp4", generator, [], options)
    assert torch.get_num_threads() == threads  # the render gives torch its thread count back
    out = decode_frames(result.output)
    worst = max(
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(out, ref, strict=True)
    )
    assert len(out) == len(ref) and worst <= 1, worst


def test_the_mnn_generator_in_worker_processes_renders_what_torch_renders_serially(tmp_path, media):
    """The CPU default (MNN, two worker processes side by side) through the pipelined render, against the
    serial render with the torch network, same seeded random weights of the real layout: Winograd's
    float32 reordering moves a mouth pixel by at most a grey level, which the paste and the lossless
    encode's colour conversion can carry to two."""
    if importlib.util.find_spec("MNN") is None:  # not importorskip: lipsync never imports MNN in-process
        pytest.skip("MNN is a dependency of lipsync; this checks an install without it")
    from lipsync.models import load_network
    from lipsync.nets import fold_batchnorm
    from lipsync.stages.lipsync import Wav2LipGenerator, generation_plan
    from lipsync.stages.wav2lip_mnn import load_mnn_generator
    from lipsync.stages.wav2lip_onnx import ensure_export
    from pipeline_fixtures import write_random_wav2lip

    ckpt = write_random_wav2lip(tmp_path / "w.pth", seed=2)
    torch_gen = Wav2LipGenerator(load_network("wav2lip_gan", ckpt, device="cpu"), "cpu", batch_size=8)
    export = ensure_export("wav2lip_gan", ckpt, tmp_path / "onnx",
                           lambda: fold_batchnorm(load_network("wav2lip_gan", ckpt, device="cpu").float()))  # fmt: skip
    mnn_gen = load_mnn_generator(export, batch_size=8, engines=2, threads=1)
    try:
        assert generation_plan(mnn_gen, cores=2) == (2, None)
        options = _options(loop_mode="none", wav2lip_batch_size=8)
        ref = serial_reference(media["two"], media["audio_2s"], tmp_path / "s.mp4", torch_gen, [], options)
        result = pipelined(media["two"], media["audio_2s"], tmp_path / "p.mp4", mnn_gen, [], options)
    finally:
        mnn_gen.close()
    out = decode_frames(result.output)
    worst = max(
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(out, ref, strict=True)
    )
    assert len(out) == len(ref) and result.stats.faces_synced > 0 and worst <= 2, worst


class _LoadingLater(LipSyncPipeline):
    """A pipeline whose generator is still loading when the job starts: it arrives after ``delay`` s, or
    its load fails with ``error``."""

    def __init__(self, generator, backend, delay: float, error: BaseException | None = None) -> None:
        super().__init__(Settings(), face_backend=backend)
        self.later, self.delay, self.error = generator, delay, error
        self.arrived = 0.0

    def load_generator_beside(self):
        from concurrent.futures import Future

        future: Future = Future()

        def arrive() -> None:
            self.arrived = time.monotonic()
            if self.error is not None:
                future.set_exception(self.error)
            else:
                future.set_result(self.later)

        threading.Timer(self.delay, arrive).start()
        return future


class _TimedBackend(ColorFaceBackend):
    first = 0.0

    def detect(self, frame_bgr):
        self.first = self.first or time.monotonic()
        return super().detect(frame_bgr)


def test_decode_and_tracking_run_while_the_generator_loads(tmp_path, media):
    options = _options(loop_mode="crossfade", wav2lip_batch_size=8)
    ref = serial_reference(
        media["two"], media["audio_2s"], tmp_path / "s.mp4", MouthMarkGenerator(), [], options
    )
    backend = _TimedBackend()
    pipe = _LoadingLater(MouthMarkGenerator(), backend, delay=0.8)
    result = pipe(LipSyncRequest(media["two"], media["audio_2s"], tmp_path / "p.mp4", (), options))
    assert 0.0 < backend.first < pipe.arrived  # the tracker was at work before the generator came
    assert result.stats.stage_seconds["load_models"] >= 0.3  # the generate stage's wait is counted
    assert result.stats.device == "custom" and result.stats.batch_size == 8
    out = decode_frames(result.output)
    assert len(out) == len(ref)
    assert all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))


def test_a_generator_that_fails_to_load_fails_the_job_typed_with_no_file_and_no_thread(tmp_path, media):
    before = _lipsync_threads()
    pipe = _LoadingLater(None, ColorFaceBackend(), delay=0.3, error=ModelError("bad checkpoint"))
    with pytest.raises(ModelError, match="bad checkpoint"):
        pipe(LipSyncRequest(media["two"], media["audio_2s"], tmp_path / "o.mp4", (), _options()))
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".*partial*"))
    assert _lipsync_threads() == before


def test_a_job_cancelled_while_the_generator_loads_stops_within_a_second(tmp_path, media):
    def cancel(stage, done, total):
        if stage == "track" and done > 0:  # mid-run: the generate stage is waiting for the load
            raise JobCancelled("cancelled")

    pipe = _LoadingLater(MouthMarkGenerator(), ColorFaceBackend(), delay=30.0)
    start = time.monotonic()
    with pytest.raises(JobCancelled):
        pipe(
            LipSyncRequest(media["two"], media["audio_5s"], tmp_path / "o.mp4", (), _options()),
            progress=cancel,
        )
    assert time.monotonic() - start < 5.0  # the 30 s load is not waited for
    assert not (tmp_path / "o.mp4").exists()


class _CropOnDevice(LipSyncPipeline):
    """A pipeline that cuts the faces on the generator's device, as on CUDA (here the CPU device)."""

    def device_crop(self, job) -> bool:
        return True


def test_device_crops_of_a_generator_that_cannot_crop_are_made_on_the_host(tmp_path, media):
    options = _options(loop_mode="crossfade", wav2lip_batch_size=8)
    ref = serial_reference(
        media["two"], media["audio_2s"], tmp_path / "s.mp4", MouthMarkGenerator(), [], options
    )
    pipe = _CropOnDevice(Settings(), generator=MouthMarkGenerator(), face_backend=ColorFaceBackend())
    result = pipe(LipSyncRequest(media["two"], media["audio_2s"], tmp_path / "p.mp4", (), options))
    out = decode_frames(result.output)
    assert len(out) == len(ref) and all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))


def test_the_generator_crops_on_its_device_and_matches_its_host_call(tmp_path, media, monkeypatch):
    """The CUDA path's device crop, run on the CPU device: the same mouths as the generator called on
    the same crops cut by crop_faces_torch, and a render through it touches only the face boxes."""
    import torch

    import lipsync.render.stages as stages_mod
    from lipsync.models import load_network
    from lipsync.stages.align_crop import crop_faces_torch
    from lipsync.stages.lipsync import Wav2LipGenerator
    from pipeline_fixtures import write_random_wav2lip

    ckpt = write_random_wav2lip(tmp_path / "w.pth", seed=3)
    generator = Wav2LipGenerator(load_network("wav2lip_gan", ckpt, device="cpu"), "cpu", batch_size=4)
    frames = decode_frames(media["two"])[:3]
    options = _options(loop_mode="none", wav2lip_batch_size=8)
    host = pipelined(media["two"], media["audio_2s"], tmp_path / "h.mp4", generator, [], options)
    from lipsync.stages.align_crop import face_crop

    h, w = frames[0].shape[:2]
    points = [host.tracks[0].get(i) for i in (0, 1, 2, 2)]
    crops = [face_crop(p.box, p.landmarks, PADS, w, h) for p in points]
    slots = [0, 1, 2, 2]
    mels = np.random.default_rng(0).standard_normal((4, 80, 16)).astype(np.float32)
    got = generator.generate_crops(frames, slots, crops, mels)
    faces = crop_faces_torch(torch.from_numpy(np.stack(frames)), slots, crops, area=True).numpy()
    np.testing.assert_array_equal(got, generator(faces, mels))
    with pytest.raises(ValueError, match="mel"):
        generator.generate_crops(frames, slots, crops, mels[:2])

    calls = []
    real = generator.generate_crops
    monkeypatch.setattr(
        generator, "generate_crops", lambda *a: calls.append(len(a[1])) or real(*a), raising=False
    )
    monkeypatch.setattr(stages_mod, "generation_plan", lambda g: (1, None))  # one forward, as on CUDA
    crop_pipe = _CropOnDevice(Settings(), generator=generator, face_backend=ColorFaceBackend())
    device = crop_pipe(LipSyncRequest(media["two"], media["audio_2s"], tmp_path / "d.mp4", (), options))
    assert sum(calls) == device.stats.faces_synced > 0  # every face went through the device crop
    a, b = decode_frames(host.output), decode_frames(device.output)
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        point = device.tracks[0].get(k)
        outside = np.ones(x.shape[:2], bool)
        if point is not None:
            x1, y1, x2, y2 = (int(v) for v in point.box.as_list())
            outside[max(0, y1 - 40) : y2 + 40, max(0, x1 - 40) : x2 + 40] = False
        assert np.abs(x.astype(int) - y)[outside].max() <= 2, k  # only the face region differs (codec noise)


def test_the_track_window_holds_a_1080p_frame_until_its_faces_are_final():
    """At the default tracking settings on a CPU (sample_every 10, smoothing 0.3) a 1080p frame waits
    sample_every + the smoothing look-ahead frames behind the decoder; the track stage's default window
    holds them all, so none is let go to be decoded a second time (128 MB had let 15 % go)."""
    from lipsync.faces.streaming import lookahead_frames
    from lipsync.options import resolve_sample_every
    from lipsync.render.stages import track_stage

    lag = resolve_sample_every(None, "cpu") + lookahead_frames(0.3, 1920.0)

    class LaggingTracker:  # the streaming tracker's contract: push returns the last final frame
        def push(self, index, picture):
            return index - lag

        def finish(self):
            return -1

    pictures = ((i, np.zeros((1080, 1920, 3), np.uint8)) for i in range(3 * lag))
    out = list(track_stage(LaggingTracker(), StageTimer(), lambda _t: None)(pictures))
    assert [i for i, _ in out] == list(range(3 * lag))
    assert all(picture is not None for _, picture in out)
    # A 4K frame's wait is more than the window holds: the oldest are let go rather than memory grown.
    pictures = ((i, np.zeros((2160, 3840, 3), np.uint8)) for i in range(3 * lag))
    out = list(track_stage(LaggingTracker(), StageTimer(), lambda _t: None)(pictures))
    assert any(picture is None for _, picture in out)


def test_a_decoded_picture_is_handed_over_at_its_last_plain_use_and_copied_before():
    """The frame stage copies a decoded picture only while the plan still needs it (a later output frame,
    a blend); at its last plain use the output frame is the picture itself (no 1.2-6 MB copy a frame)."""
    from lipsync.render.stages import SourceFrames, last_plain_uses
    from lipsync.types import PlanFrame

    plan = [PlanFrame(0), PlanFrame(1), PlanFrame(1), PlanFrame(2, 3, 0.5), PlanFrame(3), PlanFrame(2)]
    assert last_plain_uses(plan) == {0: 0, 1: 2, 3: 4, 2: 5}
    plan = [PlanFrame(0), PlanFrame(1, 0, 0.5)]  # read by a blend after its plain use: never handed over
    assert last_plain_uses(plan) == {}

    pictures = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
    source = SourceFrames(iter(enumerate(pictures)), job=None)  # the stream covers every index asked
    first = source.take(0)
    assert first is pictures[0]
    assert source.take(1) is pictures[1] and source.take(2) is pictures[2]
    # A picture the stream no longer holds comes from the reader, whose cache keeps its own: a copy.
    cached = {0: np.full((4, 4, 3), 7, np.uint8)}
    source._reader = cached.__getitem__
    again = source.take(0)
    assert again is not cached[0] and np.array_equal(again, cached[0])
