"""Model errors through the real ``lipsync`` command (a subprocess, MODELS_DIR an empty temp folder,
offline): the README's one-line ``error (code) [field]: message`` style with exit 2, one report of every
model a run needs, and name-resolution failures that fail at once instead of being retried."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lipsync.config import Settings
from lipsync.errors import ModelNotAvailable
from lipsync.models import CATALOG, DownloadOptions, ModelStore
from lipsync.models.preflight import ensure_models, needs_for_run
from pipeline_fixtures import FaceSpec, moving_box, write_speechlike_wav, write_synthetic_video

REPO = Path(__file__).resolve().parents[1]


def _lipsync(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_") and k != "MODELS_DIR"}
    clean.update({"MODELS_DIR": str(tmp_path / "models"), "LIPSYNC_OFFLINE": "1", **env})
    clean["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), clean.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", "from lipsync.cli import main; main()", *args],
        env=clean, capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )  # fmt: skip


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    # Log lines (timestamp, level, logger) may precede the error; the error itself is one styled line.
    log_line = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")
    lines = [line for line in result.stderr.splitlines() if line.strip() and not log_line.match(line)]
    assert lines and all(line.startswith("error (") for line in lines), lines  # no click-style "Error:"
    return lines


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    video = write_synthetic_video(tmp_path / "v.mp4", [FaceSpec("red", moving_box(40, 30, 60, 80))], seconds=0.4)
    return video, write_speechlike_wav(tmp_path / "a.wav", 0.4)


# --- lipsync models ------------------------------------------------------------------------------------


def test_models_download_failures_use_the_error_style_and_exit_2(tmp_path: Path) -> None:
    lines = _error_lines(_lipsync(tmp_path, "models", "download", "wav2lip_gan", "gfpgan_v1.4"))
    assert len(lines) == 2, lines
    assert lines[0].startswith("error (model_not_available) [wav2lip_gan]: ") and "wav2lip_gan.pth" in lines[0]
    assert lines[1].startswith("error (model_not_available) [gfpgan_v1.4]: ") and "LIPSYNC_OFFLINE" in lines[1]
    usage = _error_lines(_lipsync(tmp_path, "models", "download"))
    assert usage[0].startswith("error (usage): ")


def test_models_verify_reports_corrupt_files_in_the_error_style(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "wav2lip.pth").write_bytes(b"junk")
    result = _lipsync(tmp_path, "models", "verify", "wav2lip")
    assert "corrupt" in result.stdout  # the table still shows every row
    (line,) = _error_lines(result)
    assert line.startswith("error (checksum_mismatch) [wav2lip]: ") and "download again" in line


# --- one report for every model a run needs ------------------------------------------------------------


def test_first_offline_run_reports_every_missing_model_at_once(tmp_path: Path, media) -> None:
    video, audio = media
    # enhance=auto is off on a CPU: ask for enhancement, so all three models are needed.
    result = _lipsync(tmp_path, "run", "--video", str(video), "--audio", str(audio), "--out",
                      str(tmp_path / "o.mp4"), "--no-progress", "--enhance", "on")  # fmt: skip
    (line,) = _error_lines(result)
    assert line.startswith("error (model_not_available): 3 models this run needs are missing"), line
    for fact in ("wav2lip_gan.pth", "GFPGANv1.4.pth", "buffalo_l.zip", "det_10g.onnx", "w600k_r50.onnx",
                 "LIPSYNC_WAV2LIP_CHECKPOINT", "LIPSYNC_GFPGAN_CHECKPOINT", "LIPSYNC_DET_MODEL",
                 "LIPSYNC_REC_MODEL", "--no-enhance", "LIPSYNC_OFFLINE", str(tmp_path / "models" / "buffalo_l")):
        assert fact in line, (fact, line)
    assert "recognizer (w600k_r50.onnx) is needed with or without --character" in line
    assert not (tmp_path / "o.mp4").exists()

    for flags in (["--no-enhance"], []):  # off, and auto on this CPU
        no_enhance = _lipsync(tmp_path, "run", "--video", str(video), "--audio", str(audio), "--out",
                              str(tmp_path / "o.mp4"), "--no-progress", *flags)  # fmt: skip
        (line,) = _error_lines(no_enhance)
        assert "2 models" in line and "GFPGAN" not in line and "--no-enhance" not in line


def test_own_detector_is_not_asked_for_again(tmp_path: Path, media) -> None:
    video, audio = media
    det = tmp_path / "my_scrfd.onnx"
    det.write_bytes(b"user detector")  # only its existence is checked before the run
    args = ("run", "--video", str(video), "--audio", str(audio), "--out", str(tmp_path / "o.mp4"), "--no-enhance")
    (line,) = _error_lines(_lipsync(tmp_path, *args, LIPSYNC_DET_MODEL=str(det)))
    assert "det_10g.onnx" not in line and "LIPSYNC_DET_MODEL" not in line, line
    assert "extract w600k_r50.onnx into" in line and "LIPSYNC_REC_MODEL" in line, line

    # The recognizer placed by hand in the pack's folder completes it: only Wav2Lip is left to report.
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"user recognizer")
    (line,) = _error_lines(_lipsync(tmp_path, *args, LIPSYNC_DET_MODEL=str(det)))
    assert line.startswith("error (model_not_available): 1 model this run needs is missing") and "buffalo" not in line

    (line,) = _error_lines(_lipsync(tmp_path, *args, LIPSYNC_DET_MODEL=str(tmp_path / "nope.onnx")))
    assert f"LIPSYNC_DET_MODEL points at {tmp_path / 'nope.onnx'}, which does not exist" in line, line


def test_track_reports_the_missing_face_models_in_one_line(tmp_path: Path, media) -> None:
    video, _ = media
    (line,) = _error_lines(_lipsync(tmp_path, "track", "--video", str(video), "--json", str(tmp_path / "t.json"),
                                    LIPSYNC_FACE_BACKEND="insightface"))  # fmt: skip
    assert "det_10g.onnx, w600k_r50.onnx" in line and "LIPSYNC_DET_MODEL / LIPSYNC_REC_MODEL" in line, line


# --- name resolution fails at once ---------------------------------------------------------------------


def _unresolvable_catalog() -> dict:
    # .invalid never resolves (RFC 2606); two different hosts, as the real catalog's mirrors are.
    catalog = dict(CATALOG)
    for name in ("wav2lip_gan", "gfpgan_v1.4"):
        spec = CATALOG[name]
        catalog[name] = replace(spec, urls=(f"http://primary.invalid/{spec.filename}",
                                            f"http://mirror.invalid/{spec.filename}"))  # fmt: skip
    return catalog


def test_name_resolution_failure_is_not_retried(tmp_path: Path, caplog) -> None:
    options = DownloadOptions(connect_timeout=2, read_timeout=2, retries=4, backoff=1.0)
    settings = Settings(models_dir=tmp_path / "models", face_backend="dlib")
    store = ModelStore(settings, options=options, catalog=_unresolvable_catalog())
    caplog.set_level(logging.WARNING, logger="lipsync.models.download")
    with pytest.raises(ModelNotAvailable) as info:
        ensure_models(store, needs_for_run(settings, enhance=True))
    message = info.value.message
    assert not [r for r in caplog.records if "retry" in r.getMessage()], caplog.text  # 4 retries x 2 URLs before
    assert message.startswith("2 models this run needs are missing: (1) wav2lip_gan (lip-sync): ")
    for url in ("primary.invalid/wav2lip_gan.pth", "mirror.invalid/wav2lip_gan.pth", "mirror.invalid/GFPGANv1.4.pth"):
        assert url in message, message
    assert "not retried" in message and "--no-enhance" in message


def test_a_wrong_own_file_and_a_missing_one_are_both_reported(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", offline=True, det_model=tmp_path / "nope.onnx")
    with pytest.raises(ModelNotAvailable) as info:
        ensure_models(ModelStore(settings), needs_for_run(settings, enhance=False))
    message = info.value.message
    assert f"LIPSYNC_DET_MODEL points at {tmp_path / 'nope.onnx'}, which does not exist" in message
    assert "extract w600k_r50.onnx into" in message and "det_10g.onnx" not in message, message
    assert message.startswith("2 models this run needs are missing (downloads are off: LIPSYNC_OFFLINE=1)")
