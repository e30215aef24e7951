"""Wav2Lip under MNN, the CPU default (lipsync.stages.wav2lip_mnn): the same mouths as torch within a grey
level (seeded random weights of the real layout), its conversion cached and never trusted when damaged,
worker processes that run side by side, fail typed and come back, a clean stdout, no MNN telemetry, and
the fall-back to onnxruntime when MNN is missing or cannot convert."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import Settings
from lipsync.errors import ModelError
from lipsync.models import load_network, mnn_runtime
from lipsync.pipeline import LipSyncPipeline
from lipsync.stages.lipsync import Wav2LipGenerator, generation_plan
from lipsync.stages.wav2lip_mnn import MnnMouthGenerator, MnnUnavailable, converted_path, load_mnn_generator
from lipsync.stages.wav2lip_onnx import OnnxMouthGenerator, ensure_export
from test_fast_paths import _folded, _inputs, _random_wav2lip_file

# Not importorskip: importing MNN in this process would defeat the checks that lipsync never does.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("MNN") is None,
                                reason="MNN is a dependency of lipsync; this checks an install without it")  # fmt: skip


@pytest.fixture(scope="module")
def wav2lip_file(tmp_path_factory) -> Path:
    return _random_wav2lip_file(tmp_path_factory.mktemp("ckpt") / "wav2lip_gan.pth", seed=5)


@pytest.fixture(scope="module")
def export(wav2lip_file, tmp_path_factory) -> Path:
    return ensure_export("wav2lip_gan", wav2lip_file, tmp_path_factory.mktemp("onnx"), _folded(wav2lip_file))


@pytest.fixture(scope="module")
def converted(export) -> Path:
    """The MNN model of the export, converted the way lipsync converts it."""
    from lipsync.stages.wav2lip_mnn import convert

    target = converted_path(export)
    return target if target.is_file() else convert(export, target)


@pytest.fixture(scope="module")
def generator(export):
    gen = load_mnn_generator(export, batch_size=4, engines=2, threads=1)
    yield gen
    gen.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; /proc says so.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_mnn_mouths_match_torch_within_one_grey_level(generator, wav2lip_file):
    faces, mels = _inputs(7)  # two batches of 4, the second short
    ref = Wav2LipGenerator(load_network("wav2lip_gan", wav2lip_file), "cpu", batch_size=4)(faces, mels)
    out = generator(faces, mels)
    assert out.shape == ref.shape == (7, 96, 96, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert generator(faces[:0], mels[:0]).shape == (0, 96, 96, 3)
    with pytest.raises(ValueError, match="mel"):
        generator(faces, mels[:2])


def test_side_by_side_calls_use_both_workers_and_give_the_same_mouths(generator):
    faces, mels = _inputs(8, seed=11)
    expected = generator(faces, mels)
    assert generation_plan(generator, cores=2) == (2, None)  # both workers, each with its own thread
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = generator(faces, mels)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, expected) for r in results.values()) and len(results) == 4
    assert len(set(generator.pids)) == 2 and all(_alive(pid) for pid in generator.pids)


def test_the_conversion_is_cached_and_a_damaged_one_is_made_again(export, monkeypatch, caplog):
    import lipsync.stages.wav2lip_mnn as mnn_mod

    faces, mels = _inputs(3, seed=2)
    target = converted_path(export)
    first = load_mnn_generator(export, batch_size=4)
    expected = first(faces, mels)
    first.close()
    assert target.is_file() and target.name.startswith(export.name + ".mnn")
    converted: list[Path] = []
    real = mnn_mod.convert
    monkeypatch.setattr(mnn_mod, "convert", lambda e, t: converted.append(t) or real(e, t))
    again = load_mnn_generator(export, batch_size=4)
    assert converted == [] and np.array_equal(again(faces, mels), expected)  # reused, not converted
    again.close()
    target.write_bytes(b"not an MNN model")
    with caplog.at_level(logging.WARNING):
        mended = load_mnn_generator(export, batch_size=4)
    assert converted == [target] and np.array_equal(mended(faces, mels), expected)
    assert any("converting" in r.message and "again" in r.message for r in caplog.records)
    mended.close()
    assert not list(target.parent.glob(".*.tmp"))  # no temporary file left behind


def test_a_foreign_file_is_a_typed_error_and_a_failed_conversion_leaves_nothing(tmp_path):
    from lipsync.stages.wav2lip_mnn import convert

    bogus = tmp_path / "bogus.mnn"
    bogus.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="MNN"):
        MnnMouthGenerator(bogus)
    not_onnx = tmp_path / "w.onnx"
    not_onnx.write_bytes(b"not a graph")
    with pytest.raises(MnnUnavailable, match="could not convert"):
        convert(not_onnx, tmp_path / "w.mnn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.mnn", "w.onnx"]


def test_a_worker_that_dies_fails_its_call_typed_and_the_next_call_gets_a_new_one(converted):
    gen = MnnMouthGenerator(converted, batch_size=4, engines=1)
    faces, mels = _inputs(2, seed=4)
    expected = gen(faces, mels)
    (pid,) = gen.pids
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ModelError, match="MNN worker"):
        gen(faces, mels)
    assert time.monotonic() - started < 5  # noticed, not waited on
    assert np.array_equal(gen(faces, mels), expected)  # a fresh worker took its place
    (fresh,) = gen.pids
    assert fresh != pid
    gen.close()
    assert not _alive(fresh)


def test_a_worker_that_hangs_is_killed_and_its_call_fails_typed(converted, monkeypatch):
    gen = MnnMouthGenerator(converted, batch_size=4, engines=1)
    faces, mels = _inputs(2, seed=5)
    expected = gen(faces, mels)
    (pid,) = gen.pids
    os.kill(pid, signal.SIGSTOP)  # alive but never answering, as a deadlocked engine would be
    monkeypatch.setattr(mnn_runtime, "ASK_TIMEOUT_S", 1.5)
    started = time.monotonic()
    try:
        with pytest.raises(ModelError, match=r"gave no answer within 1.5 s"):
            gen(faces, mels)
        assert time.monotonic() - started < 1.5 + mnn_runtime.STOP_S + 3
        assert not _alive(pid)  # killed, not left stopped
        assert np.array_equal(gen(faces, mels), expected)  # a fresh worker took its place
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        gen.close()


def test_a_worker_that_cannot_start_is_mnn_unavailable_and_keeps_the_conversion(converted, export, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # no Python there: the worker ends without a word
    with pytest.raises(MnnUnavailable, match="could not start"):
        load_mnn_generator(export, batch_size=4)
    assert converted.is_file()  # not blamed on the model: it is not deleted or converted again


def test_closing_stops_every_worker_process_and_ctrl_c_is_left_to_the_parent(converted):
    gen = MnnMouthGenerator(converted, engines=2)
    pids = gen.pids
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    faces, mels = _inputs(2, seed=6)
    expected = gen(faces, mels)
    for pid in pids:  # what Ctrl-C in a terminal sends to the whole process group
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert all(_alive(p) for p in pids) and np.array_equal(gen(faces, mels), expected)
    gen.close()
    assert not any(_alive(p) for p in pids)
    gen.close()  # twice is harmless


def test_the_pipeline_runs_mnn_by_default_with_a_clean_stdout_and_no_telemetry(wav2lip_file, tmp_path):
    models = tmp_path / "models"
    settings = Settings(device="cpu", offline=True, models_dir=models, wav2lip_checkpoint=wav2lip_file)
    assert settings.cpu_generator == "mnn"
    pipe = LipSyncPipeline(settings)
    gen = pipe.get_generator()
    try:
        assert isinstance(gen, MnnMouthGenerator) and gen.path.parent == models / "onnx"
    finally:
        gen.close()
    # A fresh process with the conversion cached: no torch, no MNN in this process (its banners would
    # reach stdout), MNN's telemetry-laden Python tools never imported, and stdout only what we print.
    code = (
        "import sys, numpy as np\n"
        "from lipsync.config import Settings\n"
        "from lipsync.pipeline import LipSyncPipeline\n"
        f"s = Settings(device='cpu', offline=True, models_dir={str(models)!r}, wav2lip_checkpoint={str(wav2lip_file)!r})\n"
        "g = LipSyncPipeline(s).get_generator()\n"
        "out = g(np.zeros((2, 96, 96, 3), np.uint8), np.zeros((2, 80, 16), np.float32))\n"
        "print(type(g).__name__, out.shape, sorted(m for m in ('torch', 'MNN', 'MNN.tools', '_tools') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout == "MnnMouthGenerator (2, 96, 96, 3) []\n", proc.stdout
    assert "device supports" not in proc.stderr


def test_mnn_missing_or_unable_to_convert_falls_back_to_onnxruntime(wav2lip_file, tmp_path, monkeypatch, caplog):
    import lipsync.stages.wav2lip_mnn as mnn_mod

    def missing() -> str:
        raise MnnUnavailable("MNN is not installed (pip install MNN)")

    settings = Settings(device="cpu", offline=True, models_dir=tmp_path / "m", wav2lip_checkpoint=wav2lip_file)
    monkeypatch.setattr(mnn_runtime, "mnn_version", missing)
    with caplog.at_level(logging.WARNING):
        gen = LipSyncPipeline(settings).get_generator()
    assert isinstance(gen, OnnxMouthGenerator)
    assert any("not installed" in r.message and "onnxruntime instead" in r.message for r in caplog.records)
    monkeypatch.undo()

    def broken(export: Path, target: Path) -> Path:
        raise MnnUnavailable(f"MNN could not convert {export}: unsupported operator")

    monkeypatch.setattr(mnn_mod, "convert", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        gen = LipSyncPipeline(settings.model_copy(update={"models_dir": tmp_path / "n"})).get_generator()
    assert isinstance(gen, OnnxMouthGenerator)
    assert any("unsupported operator" in r.message for r in caplog.records)
    assert not list((tmp_path / "n").rglob("*.mnn"))
