"""The speed paths of issue 10 agree with the paths they replace: BatchNorm folded into Wav2Lip's
convolutions (within 1 grey level of the unfolded network, checkpoint still loaded strictly from the public
layout), the torch Poisson solve (within 2 grey levels of cv2.seamlessClone), and the CUDA-only paths
(fp16, pinned buffers), which are marked gpu and skipped without one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lipsync.errors import CheckpointLayoutError, InputError
from lipsync.models import load_network
from lipsync.nets import Wav2Lip, fold_batchnorm, has_batchnorm
from lipsync.stages.composite import composite_face, lower_face_mask
from lipsync.stages.lipsync import FACE_SIZE, Wav2LipGenerator
from lipsync.stages.poisson import poisson_clone, poisson_clone_numpy
from lipsync.types import Box
from poisson_fixtures import crop_pair, cv2_clone

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _random_wav2lip_file(path: Path, seed: int = 0) -> Path:
    """A Wav2Lip checkpoint of the public layout (legacy pickle, weights under state_dict) whose BatchNorms
    carry non-trivial statistics, as trained ones do: folding them must then really change the weights."""
    torch.manual_seed(seed)
    net = Wav2Lip()
    gen = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    torch.save({"global_step": 0, "state_dict": net.state_dict()}, path, _use_new_zipfile_serialization=False)
    return path


def _inputs(n: int = 6, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 2, (n, 80, 16)).astype(np.float32)
    return faces, mels


@pytest.fixture(scope="module")
def wav2lip_file(tmp_path_factory) -> Path:
    return _random_wav2lip_file(tmp_path_factory.mktemp("ckpt") / "wav2lip_gan.pth")


def test_folded_generator_matches_unfolded_within_one_grey_level(wav2lip_file):
    faces, mels = _inputs()
    plain = Wav2LipGenerator(load_network("wav2lip_gan", wav2lip_file), "cpu", batch_size=4, fold_bn=False)
    folded = Wav2LipGenerator(load_network("wav2lip_gan", wav2lip_file), "cpu", batch_size=4)
    assert has_batchnorm(plain.net) and not has_batchnorm(folded.net)
    a, b = plain(faces, mels), folded(faces, mels)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1
    # The statistics were not trivial, so folding really rescaled the weights.
    raw = plain.net.face_encoder_blocks[0][0].conv_block[0].weight
    fused = folded.net.face_encoder_blocks[0][0].conv_block[0].weight
    assert (raw - fused).abs().max() > 0.01


def test_folding_happens_after_a_strict_load_of_the_public_layout(wav2lip_file, tmp_path):
    net = load_network("wav2lip_gan", wav2lip_file)  # strict: every conv_block.1 (BatchNorm) key present
    assert any(k.endswith("conv_block.1.running_var") for k in net.state_dict())
    fold_batchnorm(net)
    assert not any(".conv_block.1." in k for k in net.state_dict())
    # A file missing the BatchNorm entries (e.g. someone saved a folded net) is still refused.
    bad = tmp_path / "folded.pth"
    torch.save({"state_dict": net.state_dict()}, bad)
    with pytest.raises(CheckpointLayoutError, match="missing"):
        load_network("wav2lip_gan", bad)


def test_fold_is_idempotent_and_leaves_eval_mode():
    net = Wav2Lip().train()
    fold_batchnorm(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fold_batchnorm(net)
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --- the torch Poisson solve against OpenCV -------------------------------------------------------------


@pytest.mark.parametrize("size", [(60, 50), (97, 131), (150, 120)])
def test_torch_poisson_agrees_with_seamless_clone(size):
    h, w = size
    src, dest = crop_pair(h, w, seed=h)
    mask = (lower_face_mask(h, w) > 0).astype(np.uint8) * 255
    ref = cv2_clone(src, dest, mask)
    out = poisson_clone_numpy(src, dest, mask)
    diff = np.abs(ref.astype(int) - out.astype(int))
    assert diff.max() <= 2
    assert (ref != dest).mean() > 0.3  # the clone really moved pixels


def test_torch_poisson_on_a_real_face_crop(shared_media):
    frame = cv2.imread(str(shared_media("obama.jpg")))
    box = Box(300, 150, 460, 330)
    x1, y1, x2, y2 = 300, 150, 460, 330
    region = frame[y1:y2, x1:x2]
    face = cv2.GaussianBlur(region, (9, 9), 3)
    face = cv2.add(face, np.full_like(face, 25))
    mask = (lower_face_mask(y2 - y1, x2 - x1) > 0).astype(np.uint8) * 255
    ref = cv2_clone(face, region, mask)
    out = poisson_clone_numpy(face, region, mask)
    assert np.abs(ref.astype(int) - out.astype(int)).max() <= 2
    # The composite built on it changes the frame where seamlessClone's composite does.
    assert composite_face(frame, face, box).method == "poisson"


def test_torch_poisson_batches_crops_with_different_masks():
    h, w = 80, 70
    pairs = [crop_pair(h, w, seed=s) for s in (1, 2)]
    masks = [(lower_face_mask(h, w) > 0), (lower_face_mask(h, w, center_y=0.6, half_width=0.3) > 0)]
    src = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2)
    dst = torch.from_numpy(np.stack([p[1] for p in pairs])).permute(0, 3, 1, 2)
    out = poisson_clone(src, dst, torch.from_numpy(np.stack(masks)))
    for i, (s, d) in enumerate(pairs):
        ref = cv2_clone(s, d, masks[i].astype(np.uint8) * 255)
        got = out[i].permute(1, 2, 0).to(torch.uint8).numpy()
        assert np.abs(ref.astype(int) - got.astype(int)).max() <= 2


def test_torch_poisson_rejects_mismatched_shapes_and_passes_empty_masks():
    src, dest = crop_pair(40, 40, seed=0)
    with pytest.raises(InputError):
        poisson_clone(torch.zeros(1, 3, 40, 40), torch.zeros(1, 3, 40, 41), torch.ones(40, 40))
    with pytest.raises(InputError, match="mask"):
        poisson_clone(torch.zeros(1, 3, 40, 40), torch.zeros(1, 3, 40, 40), torch.ones(30, 40))
    # Nothing to clone (the mask lies only on the cleared outer ring): the frame comes back as it was.
    ring = np.zeros((40, 40), np.uint8)
    ring[0, :] = 255
    assert np.array_equal(poisson_clone_numpy(src, dest, ring), dest)


# --- CUDA-only paths -------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_fp16_folded_generator_on_cuda_within_two_grey_levels_of_fp32(wav2lip_file):
    faces, mels = _inputs(32)
    ref = Wav2LipGenerator(load_network("wav2lip_gan", wav2lip_file), "cpu", fold_bn=False)(faces, mels)
    gen = Wav2LipGenerator(load_network("wav2lip_gan", wav2lip_file), "cuda", batch_size=16, fp16=True)
    assert gen.dtype == torch.float16 and gen._staging is not None
    out = gen(faces, mels)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 2.0
    # The pinned buffers are reused across calls (no new allocation per batch).
    buffers = dict(gen._staging._buffers)
    gen(faces, mels)
    assert all(gen._staging._buffers[k] is v for k, v in buffers.items())


@pytest.mark.gpu
@needs_cuda
def test_torch_poisson_on_cuda_agrees_with_cpu():
    src, dest = crop_pair(120, 110, seed=5)
    mask = (lower_face_mask(120, 110) > 0).astype(np.uint8) * 255
    cpu = poisson_clone_numpy(src, dest, mask)
    gpu = poisson_clone_numpy(src, dest, mask, device="cuda")
    assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 1


@pytest.mark.gpu
@needs_cuda
def test_gfpgan_fp16_batched_on_cuda_close_to_fp32_on_cpu():
    from lipsync.nets import gfpgan_v14
    from lipsync.stages.enhance import GFPGANRestorer

    torch.manual_seed(0)
    net = gfpgan_v14()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    faces = np.random.default_rng(0).integers(0, 256, (3, 512, 512, 3), dtype=np.uint8)
    ref = GFPGANRestorer(net, "cpu")(faces)
    twin = gfpgan_v14()
    twin.load_state_dict(state)
    gpu = GFPGANRestorer(twin, "cuda", batch_size=2, fp16=True)  # 3 faces: a full batch and a partial one
    out = gpu(faces)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 2.0


def test_gfpgan_restorer_batches_and_keeps_bgr_order_on_cpu():
    from lipsync.stages.enhance import GFPGANRestorer

    class SwapCheck(nn.Module):
        """Identity in RGB [-1, 1]: the restorer's own conversions must round-trip exactly."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[int] = []
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x, randomize_noise=False):
            self.calls.append(len(x))
            return x * self.scale, []

    net = SwapCheck()
    faces = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    out = GFPGANRestorer(net, "cpu", batch_size=2)(faces)
    assert net.calls == [2, 2, 1]
    assert np.abs(out.astype(int) - faces.astype(int)).max() <= 1


# --- the onnxruntime alternative on CPU -----------------------------------------------------------------


def _folded(wav2lip_file):
    from lipsync.nets import fold_batchnorm

    return lambda: fold_batchnorm(load_network("wav2lip_gan", wav2lip_file).float())


def test_onnxruntime_generator_matches_torch_and_caches_its_export(wav2lip_file, tmp_path):
    from lipsync.stages.wav2lip_onnx import load_onnx_generator

    faces, mels = _inputs(5)
    cache = tmp_path / "onnx"
    ref = Wav2LipGenerator(load_network("wav2lip_gan", wav2lip_file), "cpu", batch_size=4)(faces, mels)
    built = []

    def build():
        built.append(1)
        return _folded(wav2lip_file)()

    ort_gen = load_onnx_generator("wav2lip_gan", wav2lip_file, cache, build, batch_size=4)
    assert np.abs(ort_gen(faces, mels).astype(int) - ref.astype(int)).max() <= 1
    (export,) = cache.glob("wav2lip_gan-*.onnx")
    stamp = export.stat().st_mtime_ns
    again = load_onnx_generator("wav2lip_gan", wav2lip_file, cache, build)
    assert again.path == export and export.stat().st_mtime_ns == stamp and built == [1]  # reused, no torch
    # A corrupt cache entry is never trusted: it is exported again.
    export.write_bytes(b"not a model")
    rebuilt = load_onnx_generator("wav2lip_gan", wav2lip_file, cache, build, batch_size=2)
    assert built == [1, 1] and np.abs(rebuilt(faces, mels).astype(int) - ref.astype(int)).max() <= 1
    assert rebuilt(faces[:0], mels[:0]).shape == (0, 96, 96, 3)
    with pytest.raises(ValueError, match="mel"):
        rebuilt(faces, mels[:2])


def test_the_optimized_graph_is_kept_per_cpu_and_gives_the_same_mouths(wav2lip_file, tmp_path, monkeypatch,
                                                                        caplog):  # fmt: skip
    import logging

    from lipsync.stages import wav2lip_onnx
    from lipsync.stages.wav2lip_onnx import OnnxMouthGenerator, load_onnx_generator, optimized_path

    faces, mels = _inputs(5)
    first = load_onnx_generator("wav2lip_gan", wav2lip_file, tmp_path, _folded(wav2lip_file), batch_size=4)
    export = first.path
    saved = optimized_path(export)
    assert first.loaded_from == export and saved.is_file()  # optimized from the export, and kept
    expected = first(faces, mels)
    again = OnnxMouthGenerator(export, batch_size=4)
    assert again.loaded_from == saved
    assert np.array_equal(again(faces, mels), expected)  # the same kernels: the same numbers
    # Another CPU (or onnxruntime version) never reuses it: it optimizes and keeps its own.
    monkeypatch.setattr(wav2lip_onnx, "cpu_signature", lambda: "another-cpu")
    other = OnnxMouthGenerator(export, batch_size=4)
    assert other.loaded_from == export
    assert optimized_path(export) != saved and optimized_path(export).is_file()
    monkeypatch.undo()
    # A damaged copy is not trusted: deleted, optimized again, same mouths.
    saved.write_bytes(b"half a graph")
    with caplog.at_level(logging.WARNING):
        mended = OnnxMouthGenerator(export, batch_size=4)
    assert mended.loaded_from == export and any("does not load" in r.message for r in caplog.records)
    assert np.array_equal(mended(faces, mels), expected) and saved.stat().st_size > 1000
    # Where it cannot be written, the session is optimized in memory each time.
    monkeypatch.setattr(wav2lip_onnx, "optimized_path", lambda e: tmp_path / "no" / "such" / "dir.optimized")
    unsaved = OnnxMouthGenerator(export, batch_size=4)
    assert unsaved.loaded_from == export and np.array_equal(unsaved(faces, mels), expected)
    assert not (tmp_path / "no").exists()


def test_another_checkpoint_file_gets_its_own_export(wav2lip_file, tmp_path):
    from lipsync.stages.wav2lip_onnx import export_path

    other = tmp_path / "other.pth"
    other.write_bytes(Path(wav2lip_file).read_bytes() + b"\0")
    first = export_path(tmp_path, "wav2lip_gan", wav2lip_file)
    assert first != export_path(tmp_path, "wav2lip_gan", other)
    assert first == export_path(tmp_path, "wav2lip_gan", wav2lip_file)


def test_the_checkpoint_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import json
    import os

    from lipsync.stages import wav2lip_onnx
    from lipsync.stages.wav2lip_onnx import file_digest, known_digest

    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"weights" * 1000)
    cache = tmp_path / "onnx"
    hashed: list[Path] = []
    real = wav2lip_onnx.file_digest
    monkeypatch.setattr(wav2lip_onnx, "file_digest", lambda p: hashed.append(Path(p)) or real(p))
    first = known_digest(cache, ckpt)
    assert first == file_digest(ckpt) and len(hashed) == 1
    assert known_digest(cache, ckpt) == first and len(hashed) == 1  # remembered: not hashed again
    # Rewritten in place with the same size: a new mtime, so hashed again and a new digest.
    st = ckpt.stat()
    ckpt.write_bytes(b"WEIGHTS" * 1000)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = known_digest(cache, ckpt)
    assert second != first and second == file_digest(ckpt) and len(hashed) == 2
    # A damaged memo is ignored (and rewritten), never trusted.
    (cache / "digests.json").write_text("{not json")
    assert known_digest(cache, ckpt) == second and len(hashed) == 3
    forged = {str(ckpt.resolve()): {"stamp": "1:2:3", "sha256": "forged"}}
    (cache / "digests.json").write_text(json.dumps(forged))
    assert known_digest(cache, ckpt) == second and len(hashed) == 4


def test_the_pipeline_runs_onnxruntime_on_a_cpu_when_asked_without_torch(wav2lip_file, tmp_path):
    import subprocess
    import sys

    from lipsync.config import Settings
    from lipsync.pipeline import LipSyncPipeline
    from lipsync.stages.wav2lip_onnx import OnnxMouthGenerator

    models = tmp_path / "models"
    settings = Settings(device="cpu", offline=True, models_dir=models, wav2lip_checkpoint=wav2lip_file,
                        cpu_generator="onnxruntime")  # fmt: skip
    gen = LipSyncPipeline(settings).get_generator()
    assert isinstance(gen, OnnxMouthGenerator) and gen.path.parent == models / "onnx"
    torch_gen = LipSyncPipeline(settings.model_copy(update={"cpu_generator": "torch"})).get_generator()
    assert isinstance(torch_gen, Wav2LipGenerator)
    # With the export cached, a fresh process generates without ever importing torch.
    code = (
        "import sys, numpy as np\n"
        "from lipsync.config import Settings\n"
        "from lipsync.pipeline import LipSyncPipeline\n"
        f"s = Settings(device='cpu', offline=True, models_dir={str(models)!r}, wav2lip_checkpoint={str(wav2lip_file)!r},"
        " cpu_generator='onnxruntime')\n"
        "g = LipSyncPipeline(s).get_generator()\n"
        "out = g(np.zeros((2, 96, 96, 3), np.uint8), np.zeros((2, 80, 16), np.float32))\n"
        "print(out.shape, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split()[-1] == "False", proc.stdout


def test_a_failed_export_falls_back_to_torch_with_a_warning(wav2lip_file, tmp_path, monkeypatch, caplog):
    import logging

    import lipsync.stages.wav2lip_onnx as onnx_mod
    from lipsync.config import Settings
    from lipsync.pipeline import LipSyncPipeline

    def broken(net, path):
        raise RuntimeError("Module onnx is not installed!")

    monkeypatch.setattr(onnx_mod, "export_onnx", broken)
    settings = Settings(
        device="cpu", offline=True, models_dir=tmp_path / "m", wav2lip_checkpoint=wav2lip_file
    )  # the default, MNN, works from the same export: its failure leaves torch too
    with caplog.at_level(logging.WARNING):
        gen = LipSyncPipeline(settings).get_generator()
    assert isinstance(gen, Wav2LipGenerator)
    assert any("onnx is not installed" in r.message and "torch instead" in r.message for r in caplog.records)
    assert not list((tmp_path / "m").rglob("*.onnx"))
