"""The face detector on MNN (``cpu_detector=mnn``, the CPU default; lipsync.models.mnn_runtime): the real
SCRFD-2.5G of ../shared/models converted once into <models_dir>/mnn and run in a worker process, with
onnxruntime's detections, and onnxruntime taking over whenever MNN cannot serve."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.config import Settings
from lipsync.faces.backend import create_face_backend
from lipsync.models import mnn_runtime
from lipsync.models.mnn_runtime import MnnGraphSession, MnnUnavailable

SHARED = Path(__file__).resolve().parents[2] / "shared"
DET = SHARED / "models" / "scrfd_2.5g_bnkps_320.onnx"
PHOTOS = ["obama.jpg", "biden.jpg", "obama_and_biden_waving.jpg", "obama_biden_two_people.jpg", "rose_leslie1.jpg"]

pytestmark = [
    pytest.mark.skipif(not DET.is_file(), reason=f"needs the real SCRFD detector at {DET}"),
    # Not importorskip: importing MNN here would defeat the check that lipsync never does.
    pytest.mark.skipif(importlib.util.find_spec("MNN") is None, reason="MNN is not installed"),
]


def _backend(tmp_path: Path, detector: str = "mnn", models: str = "m"):
    settings = Settings(device="cpu", offline=True, models_dir=tmp_path / models, det_model=DET,
                        rec_model=DET, cpu_detector=detector)  # fmt: skip
    return create_face_backend(settings)


def _photos() -> list[np.ndarray]:
    return [cv2.imread(str(SHARED / "media" / name)) for name in PHOTOS]


def _same_faces(a, b) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        assert np.allclose([x.box.x1, x.box.y1, x.box.x2, x.box.y2], [y.box.x1, y.box.y1, y.box.x2, y.box.y2],
                           atol=0.05)  # fmt: skip
        assert np.allclose(x.landmarks, y.landmarks, atol=0.05) and abs(x.score - y.score) < 1e-3


def test_mnn_finds_the_faces_onnxruntime_finds_in_a_worker_process(tmp_path):
    mnn, ort = _backend(tmp_path), _backend(tmp_path, "onnxruntime")
    session = mnn.detector.session
    assert isinstance(session, MnnGraphSession) and type(ort.detector.session).__name__ == "InferenceSession"
    for photo in _photos():
        _same_faces(mnn.detect(photo), ort.detect(photo))
    assert session.runtime == "mnn" and session.pid != os.getpid()
    assert "MNN" not in sys.modules  # this process never imports it (banners, telemetry)
    assert [p.name for p in (tmp_path / "m" / "mnn").iterdir()] == [
        f"{DET.name}.mnn{mnn_runtime.mnn_version()}-{mnn_runtime.short_stamp(DET)}.mnn"
    ]
    pid = session.pid
    session.close()
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by close(): gone at once
            os.kill(pid, 0)


def test_the_conversion_is_reused_and_a_damaged_one_is_replaced(tmp_path, monkeypatch, caplog):
    photo = _photos()[0]
    expected = _backend(tmp_path, "onnxruntime").detect(photo)
    first = _backend(tmp_path)
    _same_faces(first.detect(photo), expected)
    first.detector.session.close()
    converted: list[Path] = []
    real = mnn_runtime.convert
    monkeypatch.setattr(mnn_runtime, "convert", lambda s, t: converted.append(t) or real(s, t))
    again = _backend(tmp_path)
    _same_faces(again.detect(photo), expected)
    assert converted == []  # reused
    again.detector.session.close()
    (target,) = (tmp_path / "m" / "mnn").iterdir()
    target.write_bytes(b"not an MNN model")
    damaged = _backend(tmp_path)
    with caplog.at_level(logging.WARNING):
        _same_faces(damaged.detect(photo), expected)  # onnxruntime answered
    assert damaged.detector.session.runtime == "onnxruntime" and not target.exists()
    assert any("onnxruntime runs it from now on" in r.getMessage() for r in caplog.records)
    mended = _backend(tmp_path)
    _same_faces(mended.detect(photo), expected)
    assert converted == [target] and mended.detector.session.runtime == "mnn"
    mended.detector.session.close()
    assert not list((tmp_path / "m" / "mnn").glob(".*.tmp"))


def test_a_worker_that_dies_is_taken_over_by_onnxruntime(tmp_path, caplog):
    photos = _photos()
    backend = _backend(tmp_path)
    session = backend.detector.session
    before = backend.detect(photos[2])
    os.kill(session.pid, signal.SIGKILL)
    with caplog.at_level(logging.WARNING):
        _same_faces(backend.detect(photos[2]), before)
        _same_faces(backend.detect(photos[3]), _backend(tmp_path, "onnxruntime").detect(photos[3]))
    assert session.runtime == "onnxruntime" and session.pid is None
    assert sum("onnxruntime runs it from now on" in r.getMessage() for r in caplog.records) == 1


def test_mnn_missing_or_unable_to_convert_keeps_onnxruntime_with_a_warning(tmp_path, monkeypatch, caplog):
    def missing() -> str:
        raise MnnUnavailable("MNN is not installed (pip install MNN)")

    monkeypatch.setattr(mnn_runtime, "mnn_version", missing)
    with caplog.at_level(logging.WARNING):
        backend = _backend(tmp_path)
    assert type(backend.detector.session).__name__ == "InferenceSession"
    assert any("not installed" in r.getMessage() and "onnxruntime instead" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    monkeypatch.undo()
    not_onnx = tmp_path / "det.onnx"
    not_onnx.write_bytes(b"not a graph")
    with pytest.raises(MnnUnavailable, match="could not convert"):
        mnn_runtime.convert(not_onnx, tmp_path / "out" / "det.mnn")
    assert not (tmp_path / "out" / "det.mnn").exists() and not list((tmp_path / "out").glob(".*"))


def test_stdout_stays_clean(tmp_path):
    code = (
        "import sys, cv2; from pathlib import Path; from lipsync.config import Settings;"
        "from lipsync.faces.backend import create_face_backend;"
        f"s = Settings(device='cpu', offline=True, models_dir=Path({str(tmp_path)!r}), det_model={str(DET)!r},"
        f" rec_model={str(DET)!r});"
        "b = create_face_backend(s);"
        f"faces = b.detect(cv2.imread({str(SHARED / 'media' / 'obama.jpg')!r}));"
        "print(type(b.detector.session).__name__, len(faces), 'MNN' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout == "MnnGraphSession 1 False\n", proc.stdout
    assert "device supports" not in proc.stderr
