"""``lipsync run --character-audio``: end to end through the console script with a random-weight Wav2Lip,
and each bad input as one clear error line naming the option, with no output left behind."""

from __future__ import annotations

import json
import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_file
from pipeline_fixtures import (
    FaceSpec,
    moving_box,
    stream_durations,
    write_photo_video,
    write_random_wav2lip,
    write_reference_image,
    write_speechlike_wav,
    write_synthetic_video,
)
from test_pipeline_cli import LIPSYNC, _cli, _one_error_line

pytestmark = pytest.mark.shared_media


def _wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _speech_with_pause(path: Path) -> Path:
    """Real speech, 0.8 s on, 1.0 s of room tone, 0.6 s on."""
    from lipsync.media import decode_audio

    wav = decode_audio(shared_file("speech_16k_mono_19.8s_long.wav"), 16000)[16000:38400]
    tone = 0.003 * np.random.default_rng(0).standard_normal(16000)
    return _wav(path, np.concatenate([wav[:12800], tone, wav[12800:]]))


@pytest.fixture
def dub(tmp_path, monkeypatch) -> dict[str, Path]:
    for name in list(os.environ):
        if name.startswith("LIPSYNC_") or name == "MODELS_DIR":
            monkeypatch.delenv(name)
    checkpoint = write_random_wav2lip(tmp_path / "w2l.pth", seed=3)
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    # The model store exists from the start: a CPU run caches Wav2Lip's ONNX export there (not a leftover).
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LIPSYNC_FACE_BACKEND", "dlib")
    monkeypatch.setenv("LIPSYNC_WAV2LIP_CHECKPOINT", str(checkpoint))
    return {
        "video": write_synthetic_video(tmp_path / "v.mp4", [FaceSpec("red", moving_box(40, 30, 60, 80))],
                                       seconds=0.4),
        "audio": write_speechlike_wav(tmp_path / "a.wav", 0.4),
        "red": write_reference_image(tmp_path / "red.png", "red"),
        "blue": write_reference_image(tmp_path / "blue.png", "blue"),
    }


def _run(monkeypatch, capsys, dub, out: Path, *extra: str) -> tuple[int, str]:
    code, _, err = _cli(monkeypatch, capsys, "run", "--video", str(dub["video"]), "--out", str(out),
                        "--no-enhance", "--no-progress", "--device", "cpu", *extra)  # fmt: skip
    return code, err


def _nothing_left(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before


def test_audio_for_an_unknown_character_id(tmp_path, dub, monkeypatch, capsys):
    before = {p.name for p in tmp_path.iterdir()}
    code, err = _run(monkeypatch, capsys, dub, tmp_path / "o.mp4", "--audio", str(dub["audio"]),
                     "--character", f"red:Red:{dub['red']}", "--character-audio", f"bob={dub['audio']}")  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "--character-audio" in line and "'bob'" in line and "'red'" in line
    _nothing_left(tmp_path, before)


@pytest.mark.parametrize("case", ["not_audio", "zero_length"])
def test_a_bad_stem_names_its_option(tmp_path, dub, monkeypatch, capsys, case):
    stem = tmp_path / "stem.wav"
    if case == "not_audio":
        stem.write_text("<html><body>not a sound</body></html>\n" * 20)
    else:
        _wav(stem, np.zeros(0))
    before = {p.name for p in tmp_path.iterdir()}
    code, err = _run(monkeypatch, capsys, dub, tmp_path / "o.mp4", "--audio", str(dub["audio"]),
                     "--character", f"red:Red:{dub['red']}", "--character-audio", f"red={stem}")  # fmt: skip
    line = _one_error_line(err)
    code_name = "not_media" if case == "not_audio" else "empty_audio"
    assert code == 2 and f"error ({code_name}) [--character-audio red]" in line and "stem.wav" in line
    _nothing_left(tmp_path, before)


def test_no_main_audio_while_a_character_has_no_track(tmp_path, dub, monkeypatch, capsys):
    before = {p.name for p in tmp_path.iterdir()}
    code, err = _run(monkeypatch, capsys, dub, tmp_path / "o.mp4",
                     "--character", f"red:Red:{dub['red']}", "--character", f"blue:Blue:{dub['blue']}",
                     "--character-audio", f"red={dub['audio']}")  # fmt: skip
    line = _one_error_line(err)
    assert code == 2 and "[audio]" in line and "'blue'" in line
    _nothing_left(tmp_path, before)


def test_bad_silence_settings_are_usage_errors(tmp_path, dub, monkeypatch, capsys):
    for args, word in ((("--silence", "mute"), "mute"), (("--vad-threshold", "1.5"), "vad_threshold")):
        code, err = _run(monkeypatch, capsys, dub, tmp_path / "o.mp4", "--audio", str(dub["audio"]), *args)
        assert code == 2 and word in err and "Traceback" not in err


@pytest.mark.slow
def test_lipsync_run_with_a_characters_own_track_end_to_end(tmp_path):
    """The console script: one character with its own stem and no --audio, silence=original, real dlib
    faces on a real photo, a random-weight Wav2Lip by env var."""
    video = write_photo_video(tmp_path / "obama.mp4", shared_file("obama.jpg"), width=320, height=240,
                              seconds=0.6, center=(0.54, 0.25))  # fmt: skip
    stem = _speech_with_pause(tmp_path / "obama_stem.wav")
    checkpoint = write_random_wav2lip(tmp_path / "w2l.pth", seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_") and k != "MODELS_DIR"}
    env |= {"LIPSYNC_WAV2LIP_CHECKPOINT": str(checkpoint), "LIPSYNC_FACE_BACKEND": "dlib",
            "LIPSYNC_OFFLINE": "1", "MODELS_DIR": str(tmp_path / "models")}  # fmt: skip
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = subprocess.run(
        [str(LIPSYNC), "run", "--video", str(video), "--out", str(out),
         "--character", f"obama:Barack Obama:{shared_file('obama2.jpg')}", "--character-audio", f"obama={stem}",
         "--silence", "original", "--loop-mode", "pingpong", "--no-enhance", "--batch-size", "8",
         "--device", "cpu", "--stats", str(stats), "--no-progress"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "silence=original" in proc.stdout
    data = json.loads(stats.read_text())
    assert data["frames"] == 60  # 2.4 s of stem at 25 fps
    obama = data["characters"][0]
    assert obama["audio"] == "own" and obama["silence_mode"] == "original" and obama["vad"] == "silero"
    # The 1 s pause: about 25 silent frames (plus the stem's own quiet lead-in), passed through untouched.
    assert 20 <= obama["silent_frames"] <= 35 and obama["speech_frames"] + obama["silent_frames"] == 60
    # Silent frames pass through but for the 3-frame ramps next to speech, which fade.
    assert 15 <= obama["frames_passed_through"] <= obama["silent_frames"] - 6
    assert obama["frames_synced"] + obama["frames_passed_through"] == 60
    frames, video_s, audio_s = stream_durations(out)
    assert frames == 60 and abs(video_s - audio_s) <= 1 / 25
