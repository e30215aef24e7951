"""CPU defaults of issue 10: a small SCRFD input and sparse sampling per face device, and a start-up that
reaches the first frame without importing torch (the generator loads beside tracking)."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from lipsync.errors import CheckpointLayoutError

# --- cheap detection defaults ----------------------------------------------------------------------------


def test_sample_every_default_follows_the_face_device():
    from lipsync.faces import TrackingOptions
    from lipsync.options import TrackOptions, resolve_sample_every

    job = TrackOptions()
    assert job.sample_every is None
    assert TrackingOptions.from_job(job, "cpu").sample_every == 10
    assert TrackingOptions.from_job(job, "cuda").sample_every == 5
    assert TrackingOptions.from_job(job).sample_every == 5  # a backend that does not say: today's value
    assert TrackingOptions.from_job(TrackOptions(sample_every=3), "cpu").sample_every == 3
    assert resolve_sample_every(7, "cuda") == 7


def test_face_device_of_the_real_backends_and_of_doubles():
    from lipsync.faces import face_device

    class Session:
        def __init__(self, providers):
            self._p = providers

        def get_providers(self):
            return self._p

    class Detector:
        def __init__(self, providers):
            self.session = Session(providers)

    class Backend:
        def __init__(self, providers):
            self.detector = Detector(providers)

    assert face_device(Backend(["CPUExecutionProvider"])) == "cpu"
    assert face_device(Backend(["CUDAExecutionProvider", "CPUExecutionProvider"])) == "cuda"
    assert face_device(object()) is None


def test_real_scrfd_backend_runs_at_the_cpu_input_size(tmp_path):
    """The factory gives a dynamic-input SCRFD the CPU default of 320 (LIPSYNC_DET_SIZE overrides it); the
    shared SCRFD-2.5G made dynamic still finds Obama's face at both sizes, the boxes within IoU 0.9."""
    import importlib.util
    import sys

    from conftest import shared_model

    model = shared_model("scrfd_2.5g_bnkps_320.onnx")
    # The dynamic-input copy is made by the detection benchmark's own function (one implementation).
    bench_dir = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench_dir)  # for its `_common` import; removed again so no benchmark shadows a module
    try:
        spec = importlib.util.spec_from_file_location("bench_detection", bench_dir + "/detection.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(bench_dir)
    dynamic = bench.dynamic_scrfd(model, tmp_path / "dyn.onnx")

    from lipsync.config import Settings
    from lipsync.faces import create_face_backend, face_device

    rec = tmp_path / "rec.onnx"
    rec.write_bytes(model.read_bytes())  # never called here: detection only
    settings = Settings(face_backend="insightface", det_model=dynamic, rec_model=rec, device="cpu")
    small = create_face_backend(settings)
    assert small.detector.input_width == 320 and face_device(small) == "cpu"
    big = create_face_backend(settings.model_copy(update={"det_size": 640}))
    assert big.detector.input_width == 640
    frame = cv2.imread(str(Path(model).parents[1] / "media" / "obama.jpg"))
    a, b = small.detect(frame)[0].box, big.detect(frame)[0].box
    inter = max(0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
    assert inter / (a.area + b.area - inter) >= 0.9


def test_det_size_setting_is_checked():
    from pydantic import ValidationError

    from lipsync.config import Settings

    with pytest.raises(ValidationError):
        Settings(det_size=300)  # not a multiple of 32
    assert Settings(det_size=416).det_size == 416


# --- start-up ----------------------------------------------------------------------------------------------


def test_the_run_path_imports_no_torch_and_no_scipy_before_work():
    """torch (seconds to import on a CPU) loads beside tracking, on first use, not with the modules."""
    import subprocess
    import sys

    code = (
        "import sys, lipsync.pipeline, lipsync.cli.run, lipsync.faces, lipsync.render;"
        "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_generator_that_fails_to_load_beside_tracking_surfaces_its_typed_error(tmp_path):
    from lipsync.config import Settings
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
    from pipeline_fixtures import (
        ColorFaceBackend,
        FaceSpec,
        moving_box,
        write_speechlike_wav,
        write_synthetic_video,
    )

    video = write_synthetic_video(
        tmp_path / "v.mp4", [FaceSpec("red", moving_box(40, 20, 60, 76))], width=160, height=120, seconds=0.2
    )
    audio = write_speechlike_wav(tmp_path / "a.wav", 0.2)
    bad = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": {"nonsense": torch.zeros(1)}}, bad)
    settings = Settings(device="cpu", offline=True, models_dir=tmp_path / "m", wav2lip_checkpoint=bad)
    pipe = LipSyncPipeline(settings, face_backend=ColorFaceBackend())
    out = tmp_path / "out.mp4"
    with pytest.raises(CheckpointLayoutError):
        pipe(LipSyncRequest(video, audio, out, options=LipSyncOptions(enhance="off")))
    assert not out.exists()


def _one_face_job(tmp_path: Path, generator, backend, frames: int) -> None:
    """A lip-sync job on a synthetic clip of one moving face, ``frames`` long at 25 fps."""
    from lipsync.config import Settings
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
    from pipeline_fixtures import FaceSpec, moving_box, write_speechlike_wav, write_synthetic_video

    video = write_synthetic_video(tmp_path / "v.mp4", [FaceSpec("red", moving_box(40, 30, 64, 84, dx=0.3))],
                                  width=256, height=192, fps=25, seconds=frames / 25)  # fmt: skip
    audio = write_speechlike_wav(tmp_path / "a.wav", frames / 25)
    pipe = LipSyncPipeline(Settings(device="cpu"), generator=generator, face_backend=backend)
    pipe(LipSyncRequest(video, audio, tmp_path / "out.mp4", (), LipSyncOptions(enhance="off")))


@pytest.mark.parametrize(("device", "every"), [("cpu", 10), ("cuda", 5)])
def test_lipsync_run_samples_faces_at_the_backend_devices_default(tmp_path, device, every):
    """`lipsync run` (the pipeline) resolves an unset sample_every from the face backend's device, as
    `lipsync track` does: a CPU backend detects on every 10th frame, a CUDA one on every 5th."""
    from pipeline_fixtures import ColorFaceBackend, IdentityGenerator

    backend = ColorFaceBackend()
    backend.device = device
    frames = 60
    _one_face_job(tmp_path, IdentityGenerator(), backend, frames)
    # One steady face: a detection on each sampled frame (plus the last frame's), nothing more.
    assert frames // every <= backend.detect_calls <= frames // every + 2


def test_a_job_holds_numpys_blas_to_one_thread_and_restores_it(tmp_path):
    """OpenBLAS's workers spun on the cores after each of a job's small matrix products: during a job
    (seen from inside the generator's call) numpy's BLAS has one thread; afterwards the old count."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from pipeline_fixtures import ColorFaceBackend, IdentityGenerator

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("numpy here is linked to no BLAS that threadpoolctl can see")

    class Recording(IdentityGenerator):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[list[int]] = []

        def __call__(self, faces, mels):
            self.seen.append(blas_threads())
            return super().__call__(faces, mels)

    generator = Recording()
    with threadpool_limits(limits=2, user_api="blas"):
        _one_face_job(tmp_path, generator, ColorFaceBackend(), 10)
        after = blas_threads()
    assert generator.seen and all(threads == [1] * len(threads) for threads in generator.seen)
    assert after == [2] * len(after)
