"""``lipsync run``: end to end through the installed console script, and its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared_file
from lipsync.cli import main
from pipeline_fixtures import (
    FaceSpec,
    moving_box,
    stream_durations,
    write_photo_video,
    write_random_wav2lip,
    write_speechlike_wav,
    write_synthetic_video,
)

LIPSYNC = Path(sys.executable).with_name("lipsync")


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``lipsync ...`` in-process through the console entry point (its error handling included)."""
    monkeypatch.setattr(sys, "argv", ["lipsync", *args])
    with pytest.raises(SystemExit) as info:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    return {
        "video": write_synthetic_video(
            tmp_path / "v.mp4", [FaceSpec("red", moving_box(40, 30, 60, 80))], seconds=0.4
        ),
        "audio": write_speechlike_wav(tmp_path / "a.wav", 0.4),
    }


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("LIPSYNC_") or name == "MODELS_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LIPSYNC_FACE_BACKEND", "dlib")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    return lines[0]


def test_missing_video_is_one_clear_line(tmp_path, inputs, offline_env, monkeypatch, capsys):
    code, _, err = _cli(
        monkeypatch, capsys, "run", "--video", str(tmp_path / "nope.mp4"), "--audio", str(inputs["audio"]),
        "--out", str(tmp_path / "o.mp4"),
    )  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "[video]" in line and "nope.mp4" in line and "no such file" in line


def test_missing_audio_and_reference_image(tmp_path, inputs, offline_env, monkeypatch, capsys):
    code, _, err = _cli(
        monkeypatch, capsys, "run", "--video", str(inputs["video"]), "--audio", str(tmp_path / "nope.wav"),
        "--out", str(tmp_path / "o.mp4"),
    )  # fmt: skip
    assert code == 2 and "[audio]" in _one_error_line(err)
    code, _, err = _cli(
        monkeypatch, capsys, "run", "--video", str(inputs["video"]), "--audio", str(inputs["audio"]),
        "--out", str(tmp_path / "o.mp4"), "--character", f"bob:Bob:{tmp_path / 'bob.jpg'}",
    )  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "--character" in line and "bob.jpg" in line and "does not exist" in line


def test_malformed_character_option(tmp_path, inputs, offline_env, monkeypatch, capsys):
    code, _, err = _cli(
        monkeypatch, capsys, "run", "--video", str(inputs["video"]), "--audio", str(inputs["audio"]),
        "--out", str(tmp_path / "o.mp4"), "--character", "just-a-name",
    )  # fmt: skip
    assert code == 2 and "ID:NAME:IMAGE" in _one_error_line(err)


def test_offline_without_models_names_the_missing_file(tmp_path, inputs, offline_env, monkeypatch, capsys):
    code, _, err = _cli(
        monkeypatch, capsys, "run", "--video", str(inputs["video"]), "--audio", str(inputs["audio"]),
        "--out", str(tmp_path / "o.mp4"), "--no-enhance", "--no-progress",
    )  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "wav2lip_gan.pth" in line and "offline" in line.lower()
    assert not (tmp_path / "o.mp4").exists()


def test_bad_option_value_is_a_usage_error(tmp_path, inputs, monkeypatch, capsys):
    code, _, err = _cli(
        monkeypatch, capsys, "run", "--video", str(inputs["video"]), "--audio", str(inputs["audio"]),
        "--out", str(tmp_path / "o.mp4"), "--loop-mode", "bounce",
    )  # fmt: skip
    assert code == 2 and "bounce" in err and "Traceback" not in err


@pytest.mark.slow
def test_lipsync_run_end_to_end(tmp_path):
    """The console script with a random-weight Wav2Lip (by env var), the dlib backend, and progress bars."""
    video = write_photo_video(
        tmp_path / "obama.mp4",
        shared_file("obama.jpg"),
        width=320,
        height=240,
        seconds=0.6,
        center=(0.54, 0.25),
    )
    audio = write_speechlike_wav(tmp_path / "speech.wav", 1.0)
    checkpoint = write_random_wav2lip(tmp_path / "w2l.pth", seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_") and k != "MODELS_DIR"}
    env |= {
        "LIPSYNC_WAV2LIP_CHECKPOINT": str(checkpoint),
        "LIPSYNC_FACE_BACKEND": "dlib",
        "LIPSYNC_OFFLINE": "1",
        "MODELS_DIR": str(tmp_path / "models"),
    }
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = subprocess.run(
        [str(LIPSYNC), "run", "--video", str(video), "--audio", str(audio), "--out", str(out),
         "--character", f"obama:Barack Obama:{shared_file('obama2.jpg')}", "--loop-mode", "pingpong",
         "--no-enhance", "--pads", "0", "15", "0", "0", "--batch-size", "8", "--device", "cpu",
         "--stats", str(stats)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "lip-syncing" in proc.stderr  # the tqdm bar
    assert "wrote" in proc.stdout and "Barack Obama: 25 synced / 0 passed through" in proc.stdout
    data = json.loads(stats.read_text())
    assert data["frames"] == 25 and data["loop_mode"] == "pingpong" and data["batch_size"] == 8
    assert data["characters"][0]["id"] == "obama" and data["realtime_factor"] > 0
    frames, video_s, audio_s = stream_durations(out)
    assert frames == 25 and abs(video_s - audio_s) <= 1 / 25
