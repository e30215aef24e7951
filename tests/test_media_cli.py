"""`lipsync probe FILE [--json]` on synthetic files and on every file in ../shared/media."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED_MEDIA, shared_file
from lipsync.cli import cli
from media_fixtures import write_video

# What the shared media really is (SOURCES.md and ffprobe): fps, VFR, CFR frames, container duration,
# audio rate / channels / duration. Images: size and one frame at 25 fps.
SHARED_VIDEOS = {
    "talking_chaplin_850x480_30fps.mp4": ("30", False, 210, 7.018, 48000, 2, 7.018, (850, 480)),
    "talking_monalisa_1280x720_29.97fps.mp4": (
        "30000/1001",
        False,
        422,
        14.215,
        16000,
        1,
        14.215,
        (1280, 720),
    ),
    "talking_vfr_700x700_avg22fps.mp4": ("1350/61", True, 135, 6.133, 44100, 2, 6.107, (700, 700)),
}
SHARED_AUDIO = {
    "speech_44k_mono_5s.mp3": (44100, 1, 4.911),
    "speech_en_16k_stereo_8s.wav": (16000, 2, 8.0),
    "speech_16k_mono_19.8s_long.wav": (16000, 1, 19.84),
}
SHARED_IMAGES = [
    "obama.jpg",
    "obama2.jpg",
    "biden.jpg",
    "biden2.jpg",
    "obama_biden_two_people.jpg",
    "obama_and_biden_waving.jpg",
    "rose_leslie1.jpg",
    "rose_leslie2.jpg",
]


def _probe_json(path: Path) -> dict:
    result = CliRunner().invoke(cli, ["probe", "--json", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("name", sorted(SHARED_VIDEOS))
def test_probe_json_shared_videos(name):
    fps, vfr, frames, duration, rate, channels, audio_duration, size = SHARED_VIDEOS[name]
    data = _probe_json(shared_file(name))
    assert data["fps"] == fps
    assert data["is_vfr"] is vfr
    assert data["num_frames"] == frames
    assert data["duration"] == pytest.approx(duration, abs=0.01)
    assert data["video_duration"] == pytest.approx(float(frames / Fraction(fps)), abs=1e-6)
    assert (data["width"], data["height"]) == size == (data["display_width"], data["display_height"])
    assert data["rotation"] == 0 and data["pix_fmt"] == "yuv420p" and data["video_codec"] == "h264"
    assert data["has_audio"] is True
    assert (data["audio_sample_rate"], data["audio_channels"]) == (rate, channels)
    assert data["audio_duration"] == pytest.approx(audio_duration, abs=0.01)


@pytest.mark.parametrize("name", sorted(SHARED_AUDIO))
def test_probe_json_shared_audio(name):
    rate, channels, duration = SHARED_AUDIO[name]
    data = _probe_json(shared_file(name))
    assert data["has_video"] is False and data["num_frames"] == 0
    assert (data["audio_sample_rate"], data["audio_channels"]) == (rate, channels)
    assert data["audio_duration"] == pytest.approx(duration, abs=0.01)
    assert data["duration"] == pytest.approx(duration, abs=0.01)


@pytest.mark.parametrize("name", SHARED_IMAGES)
def test_probe_json_shared_images(name):
    data = _probe_json(shared_file(name))
    assert data["is_image"] is True and data["num_frames"] == 1 and data["fps"] == "25"
    assert data["has_audio"] is False and data["width"] > 100 and data["height"] > 100


def test_every_shared_file_is_covered():
    if not SHARED_MEDIA.exists():
        pytest.skip("needs ../shared/media (the shared test media is not beside this checkout)")
    names = {p.name for p in SHARED_MEDIA.iterdir() if p.suffix != ".md"}
    assert names == set(SHARED_VIDEOS) | set(SHARED_AUDIO) | set(SHARED_IMAGES)


def test_human_output(tmp_path):
    path = write_video(tmp_path / "c.mp4", frames=12, fps=24, audio_seconds=0.5)
    result = CliRunner().invoke(cli, ["probe", str(path)], catch_exceptions=False)
    assert result.exit_code == 0
    assert "12 at 24 fps" in result.output and "constant frame rate" in result.output
    assert "audio:      aac, 16000 Hz, 1 ch" in result.output


def test_console_script_reports_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("lipsync")
    if not exe.exists():
        pytest.skip("the lipsync console script is not installed in this environment")
    page = tmp_path / "clip.mp4"
    page.write_text("<html><body>Not Found</body></html>")
    proc = subprocess.run([str(exe), "probe", str(page)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "error (not_media)" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [str(exe), "probe", str(tmp_path / "missing.mp4")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "error (media_not_found)" in proc.stderr
    ok = write_video(tmp_path / "ok.mp4", frames=5, fps=30)
    proc = subprocess.run([str(exe), "probe", "--json", str(ok)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["fps"] == "30"
