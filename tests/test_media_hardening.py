"""Regression tests for the media and CLI defects of issue 13 (hardening), one class each, through the
real commands (``lipsync ...`` in-process through its console entry point, or as a subprocess) and,
where the command needs models this machine lacks, through the real pipeline with test doubles."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from lipsync.cli import main
from lipsync.cli._common import ProgressBar
from lipsync.config import Settings
from lipsync.errors import BadFrameRate, CorruptMedia, MediaTooLarge
from lipsync.media import (
    MediaLimits,
    check_job_media,
    check_output_frames,
    decode_audio,
    iter_frames,
    probe,
)
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from media_fixtures import beep_onset, read_index, write_offset_clip, write_video
from pipeline_fixtures import (
    ColorFaceBackend,
    FaceSpec,
    IdentityGenerator,
    moving_box,
    render_synthetic_frame,
    stream_durations,
    write_speechlike_wav,
    write_synthetic_video,
)

LIPSYNC = Path(sys.executable).with_name("lipsync")
RED = FaceSpec("red", moving_box(40, 30, 64, 84))


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["lipsync", *args])
    with pytest.raises(SystemExit) as info:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No models anywhere: a run that gets past the input checks fails on the first missing model, so an
    input error proves it came before any work."""
    for name in list(os.environ):
        if name.startswith("LIPSYNC_") or name == "MODELS_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LIPSYNC_FACE_BACKEND", "dlib")


@pytest.fixture
def speech(tmp_path) -> Path:
    return write_speechlike_wav(tmp_path / "speech.wav", 1.0)


def _pipeline_run(video: Path, audio: Path, out: Path, **kw):
    pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    events: list[tuple[str, int, int]] = []
    request = LipSyncRequest(video, audio, out, options=LipSyncOptions(**{"enhance": "off", **kw}))
    return pipe(request, progress=lambda *e: events.append(e)), events


def _face_video(path: Path, fps: Fraction, frames: int) -> Path:
    """H.264 cartoon-face frames at any ``fps`` (time base 1/fps, one tick a frame)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        stream.codec_context.time_base = 1 / fps
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render_synthetic_frame(160, 128, [RED], i), format="bgr24")
            frame.pts, frame.time_base = i, 1 / fps
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --- defect 3: a frame-rate cap and an output-frame cap, before any work ----------------------------------


def test_absurd_frame_rate_is_refused_before_any_work(tmp_path, speech, offline, monkeypatch, capsys):
    video = write_video(tmp_path / "fast.mp4", frames=30, fps=Fraction(1_000_000))
    assert video.stat().st_size < 10_000  # the red-team's 8 KB file, a million frames a second
    code, _, err = _cli(monkeypatch, capsys, "run", "--video", str(video), "--audio", str(speech),
                        "--out", str(tmp_path / "o.mp4"), "--no-enhance")  # fmt: skip
    line = _error_line(err)
    # bad_frame_rate, not model_not_available: refused before the models were even looked for.
    assert code == 2 and line.startswith("error (bad_frame_rate) [video]:"), line
    assert "1,000,000 fps" in line and "240 fps" in line and "LIPSYNC_MAX_FPS" in line
    code, _, err = _cli(monkeypatch, capsys, "probe", str(video))
    assert code == 2 and "bad_frame_rate" in _error_line(err)
    # The cap is a setting; a normal rate passes.
    monkeypatch.setenv("LIPSYNC_MAX_FPS", "2000000")
    assert probe(video, MediaLimits.from_settings(Settings())).stream_fps == 1_000_000
    assert probe(write_video(tmp_path / "ok.mp4", frames=5, fps=240)).fps == 240


def test_output_frames_are_bounded_by_max_duration(tmp_path, speech):
    limits = MediaLimits(max_duration_s=2.0)
    check_output_frames(50, Fraction(25), limits)
    with pytest.raises(MediaTooLarge, match=r"51 frames at 25 fps.*limit is 50") as err:
        check_output_frames(51, Fraction(25), limits)
    assert err.value.field == "audio" and err.value.http_status == 413
    video = write_video(tmp_path / "v.mp4", frames=10, fps=25)
    assert check_job_media(video, speech, MediaLimits()).output_frames == 25
    with pytest.raises(MediaTooLarge) as err:  # the audio's declared 1 s is over a 0.5 s limit
        check_job_media(video, speech, MediaLimits(max_duration_s=0.5))
    assert err.value.field == "audio"


# --- defect 12: low frame rates are resampled, the output is trimmed to the audio --------------------------


def test_very_low_frame_rate_is_resampled_and_trimmed_to_the_audio(tmp_path, speech, monkeypatch, capsys):
    video = _face_video(tmp_path / "slow.mp4", Fraction(1, 1000), 2)  # 2 frames, 1000 s each
    code, out, _ = _cli(monkeypatch, capsys, "probe", str(video))
    assert code == 0 and "frames:     50000 at 25 fps" in out
    info = probe(video)
    assert (info.stream_fps, info.fps, info.source_frames) == (Fraction(1, 1000), 25, 2)
    # Frame i shows the source frame on screen at i / 25 s: the first for 1000 s, then the second.
    assert [read_index(f) for f in iter_frames(write_video(tmp_path / "idx.mp4", frames=2,
                                                           fps=Fraction(1, 2)))] == [0] * 50 + [1] * 50  # fmt: skip
    result, _ = _pipeline_run(video, speech, tmp_path / "out.mp4")
    frames, video_s, audio_s = stream_durations(result.output)
    assert frames == 25 and video_s == pytest.approx(1.0) and audio_s == pytest.approx(1.0, abs=0.03)
    assert result.stats.fps == 25


# --- defect 14: damaged audio is refused like a cut MP4 ----------------------------------------------------


def _cut_wav(tmp_path: Path) -> Path:
    full = write_speechlike_wav(tmp_path / "full.wav", 9.6)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:100_000])
    return cut


def test_truncated_wav_is_corrupt_media(tmp_path, offline, monkeypatch, capsys):
    cut = _cut_wav(tmp_path)
    video = write_video(tmp_path / "v.mp4", frames=10, fps=25)
    code, _, err = _cli(monkeypatch, capsys, "run", "--video", str(video), "--audio", str(cut),
                        "--out", str(tmp_path / "o.mp4"), "--no-enhance")  # fmt: skip
    line = _error_line(err)
    assert code == 2 and line.startswith("error (corrupt_media) [audio]: cut.wav is truncated"), line
    assert "declares 9.60 s" in line and "holds only 3.12 s" in line
    with pytest.raises(CorruptMedia, match="truncated"):
        decode_audio(cut)
    code, _, err = _cli(monkeypatch, capsys, "probe", str(cut))
    assert code == 2 and "corrupt_media" in _error_line(err)
    # An intact WAV (and one whose writer left the length open, as streaming writers do) still reads.
    assert len(decode_audio(tmp_path / "full.wav")) == 9.6 * 16000
    data = bytearray((tmp_path / "full.wav").read_bytes())
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "open.wav").write_bytes(bytes(data[:100_000]))
    assert len(decode_audio(tmp_path / "open.wav")) == (100_000 - 44) // 2


# --- defect 15: stream start times --------------------------------------------------------------------------


def test_tracking_check_keeps_the_source_sound_in_sync(tmp_path, monkeypatch, capsys):
    clip = write_offset_clip(tmp_path / "offset.mp4", video_start=0.852, audio_start=0.2, beep_at=1.5)
    info = probe(clip)
    assert info.video_start == pytest.approx(0.852) and 0.1 < info.audio_start < 0.2
    # The source's picture at file time 1.5 s is where the beep is: 0.648 s into the video.
    assert beep_onset(clip) == pytest.approx(1.5 - info.audio_start, abs=0.01)
    out = tmp_path / "vis.mp4"
    code, _, err = _cli(monkeypatch, capsys, "track", "--video", str(clip), "--backend", "dlib",
                        "--out", str(out), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert beep_onset(out) == pytest.approx(1.5 - 0.852, abs=0.01)
    frames, video_s, audio_s = stream_durations(out)
    assert frames == 60 and audio_s == pytest.approx(video_s, abs=0.03)


def test_run_plans_frames_on_the_video_streams_own_timeline(tmp_path):
    clip = write_offset_clip(tmp_path / "offset.mp4", video_start=0.852, audio_start=0.008)
    info = probe(clip)
    # 60 frames from the video's own start, not 0.852 s of invented frames before them.
    assert info.num_frames == 60 and info.video_duration == pytest.approx(2.4)
    assert [read_index(f) for f in iter_frames(clip, info=info)] == list(range(60))


def test_run_with_the_videos_own_sound_keeps_it_in_sync(tmp_path):
    # --audio is the video file itself: its sound is the source's own, so the start times count there too.
    clip = write_offset_clip(tmp_path / "talk.mp4", video_start=0.852, audio_start=0.2, beep_at=1.5,
                             size=(160, 128), frame_at=lambda i: render_synthetic_frame(160, 128, [RED], i))  # fmt: skip
    result, _ = _pipeline_run(clip, clip, tmp_path / "out.mp4")
    assert beep_onset(result.output) == pytest.approx(1.5 - 0.852, abs=0.01)
    _, video_s, audio_s = stream_durations(result.output)
    # The output runs for the sound that follows the picture's start, all of it (to the next frame).
    info = probe(clip)
    assert 0 <= video_s - (info.audio_start + info.audio_duration - 0.852) < 0.04 + 1e-6
    assert audio_s == pytest.approx(video_s, abs=0.03)


# --- defect 16: a directory as an input gets one message everywhere ----------------------------------------


def test_a_directory_as_input_is_named_as_one(tmp_path, speech, offline, monkeypatch, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    video = write_video(tmp_path / "v.mp4", frames=10, fps=25)
    out = str(tmp_path / "o.mp4")
    cases = [
        (["run", "--video", str(folder), "--audio", str(speech), "--out", out], "[video]"),
        (["run", "--video", str(video), "--audio", str(folder), "--out", out], "[audio]"),
        (["track", "--video", str(folder), "--json", str(tmp_path / "t.json")], "[video]"),
        (["probe", str(folder)], ""),
    ]
    for args, tag in cases:
        code, _, err = _cli(monkeypatch, capsys, *args)
        line = _error_line(err)
        assert code == 2 and f"error (not_media) {tag}".rstrip() in line, line
        assert f"{folder} is a directory, not a media file" in line, line
    code, _, err = _cli(monkeypatch, capsys, "run", "--video", str(video), "--audio", str(speech),
                        "--out", out, "--character", f"a:A:{folder}")  # fmt: skip
    line = _error_line(err)
    assert code == 2 and "--character" in line and f"{folder} is a directory, not a media file" in line


# --- defect 19: missing output folders are created by run and track alike ----------------------------------


def test_missing_output_folders_are_created_by_every_command(tmp_path, speech, offline, monkeypatch, capsys):
    video = write_synthetic_video(tmp_path / "v.mp4", [RED], width=160, height=128, seconds=0.4)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    # Both refuse, before any work and in the same words, a folder that cannot be made.
    for args in (
        ["run", "--video", str(video), "--audio", str(speech), "--out", str(blocker / "o.mp4")],
        ["track", "--video", str(video), "--out", str(blocker / "o.mp4")],
    ):
        code, _, err = _cli(monkeypatch, capsys, *args)
        line = _error_line(err)
        assert code == 2 and "error (invalid_input)" in line and f"{blocker} is a file, not a folder" in line
    # run gets past the output check with a missing folder (here: to the missing model)...
    code, _, err = _cli(monkeypatch, capsys, "run", "--video", str(video), "--audio", str(speech),
                        "--out", str(tmp_path / "new" / "o.mp4"), "--no-enhance")  # fmt: skip
    assert code == 2 and "model_not_available" in _error_line(err)
    # ...and the recipe creates it, as track does.
    result, _ = _pipeline_run(video, speech, tmp_path / "made" / "deeper" / "o.mp4")
    assert result.output.is_file()
    code, _, err = _cli(monkeypatch, capsys, "track", "--video", str(video), "--backend", "dlib",
                        "--out", str(tmp_path / "made2" / "vis.mp4"), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "made2" / "vis.mp4").is_file()


# --- defect 20: corrupt_media for a damaged --video names the field ----------------------------------------


def test_damaged_video_error_carries_the_video_tag(tmp_path, speech, monkeypatch, capsys):
    full = write_video(tmp_path / "full.mp4", frames=75, fps=25, width=160, height=120, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.25)])
    assert probe(cut).num_frames == 75  # the index is intact: the damage shows only while decoding
    code, _, err = _cli(monkeypatch, capsys, "track", "--video", str(cut), "--backend", "dlib",
                        "--json", str(tmp_path / "t.json"), "--no-progress")  # fmt: skip
    line = _error_line(err)
    assert code == 2 and line.startswith("error (corrupt_media) [video]:"), line
    with pytest.raises(CorruptMedia) as info:
        _pipeline_run(cut, speech, tmp_path / "o.mp4")
    assert info.value.field == "video"


# --- defect 21: progress off a terminal -------------------------------------------------------------------


def test_progress_off_a_terminal_is_a_few_lines_per_stage(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=210, fps=25, width=64, height=48)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    proc = subprocess.run(
        [str(LIPSYNC), "--log-level", "WARNING", "track", "--video", str(clip), "--backend", "dlib",
         "--json", str(tmp_path / "t.json")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tracking")]
    # tqdm wrote 212 lines here: one per frame. Now: the start, one per 5 %, the end (and none per 10 s
    # on a run this short).
    assert 2 <= len(lines) <= 22, proc.stderr
    assert lines[-1].startswith("tracking: done, 210 frames in "), lines
    assert "\r" not in proc.stderr


def test_progress_stages_steps_and_enhancement(tmp_path):
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(stream=stream, clock=lambda: now[0])
    bar.update("prepare", 0, 1)
    now[0] += 0.5
    bar.update("prepare", 1, 1)
    for done in range(0, 101, 4):  # lip-syncing and enhancing take turns per batch
        bar.update("lipsync", done, 100)
        bar.update("enhance", done, 100)
        now[0] += 0.2
    now[0] += 60  # a slow stage still says it is alive every 10 s
    bar.update("encode", 0, 1)
    now[0] += 2
    bar.update("encode", 1, 1)
    bar.update("track", 0, 1000)
    for done in range(1, 30):
        now[0] += 4
        bar.update("track", done, 1000)
    text = stream.getvalue()
    assert not re.search(r"(?<![\d/])1(/1)? frames?\b", text), text
    assert "prepare: done in 0.5 s" in text and "finishing: done in 2.0 s" in text
    assert "lip-syncing: done, 100 frames" in text and "enhancing faces: done, 100 frames" in text
    per_stage = {s: sum(line.startswith(s) for line in text.splitlines()) for s in ("lip-syncing", "enhancing")}
    assert all(n <= 22 for n in per_stage.values()), per_stage
    tracking = [line for line in text.splitlines() if line.startswith("tracking")]
    assert 9 <= len(tracking) <= 11, tracking  # 116 s at under 5 % (updates 4 s apart): a line each 12 s


def test_pipeline_reports_enhancement_as_its_own_stage(tmp_path, speech):
    from lipsync.stages.enhance import FaceEnhancer

    class SameFaces:
        batch_size = 4

        def __call__(self, faces: np.ndarray) -> np.ndarray:
            return faces

    video = write_synthetic_video(tmp_path / "v.mp4", [RED], width=160, height=128, seconds=0.4)
    pipe = LipSyncPipeline(Settings(), generator=IdentityGenerator(), face_backend=ColorFaceBackend(),
                           enhancer=FaceEnhancer(SameFaces()))  # fmt: skip
    events: list[tuple[str, int, int]] = []
    pipe(LipSyncRequest(video, speech, tmp_path / "o.mp4", options=LipSyncOptions(enhance="on")), progress=lambda *e: events.append(e))
    stages = [e[0] for e in events]
    assert "enhance" in stages and events[-1] == ("encode", 1, 1)
    assert [e for e in events if e[0] == "enhance"][-1] == ("enhance", 25, 25)


# --- also: limits checked from the header, before decoding -------------------------------------------------


def _huge_png(path: Path, side: int = 16000) -> Path:
    """A valid 0.75 MB PNG declaring side x side RGB (768 MB decoded): all black, so it deflates 1000:1."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + side * 3)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_huge_declared_image_is_refused_without_decoding(tmp_path):
    png = _huge_png(tmp_path / "bomb.png")
    assert png.stat().st_size < 1_000_000
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    # A child's peak RSS starts at its parent's (Linux carries the high-water mark over fork and exec),
    # so the command is started by a small launcher, not by this test process with torch loaded.
    launcher = (
        "import os, sys\n"
        "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "print(usage.ru_maxrss)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", launcher, str(LIPSYNC), "probe", str(png)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err, peak_kib = proc.stderr, int(proc.stdout.split()[-1])
    assert proc.returncode == 2, err
    assert "error (media_too_large): bomb.png declares a picture of 16000x16000" in err
    # Decoding it would take 768 MB; the whole command (Python, numpy, PyAV) stays far below that.
    assert peak_kib < 400 * 1024, peak_kib  # KiB on Linux


def test_total_pixels_and_declared_size_come_from_headers(tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mp4", frames=50, fps=25, width=64, height=48)
    with pytest.raises(MediaTooLarge, match=r"64x48 x 50 frames") as err:
        probe(video, MediaLimits(max_total_pixels=64 * 48 * 49))
    assert "LIPSYNC_MAX_TOTAL_PIXELS" in err.value.message
    # No frame was decoded to find that out.
    import lipsync.media.info as info_module

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a frame before checking the limits")

    monkeypatch.setattr(info_module, "_first_frame", no_decode)
    with pytest.raises(MediaTooLarge):
        probe(video, MediaLimits(max_total_pixels=64 * 48 * 49))
    with pytest.raises(MediaTooLarge, match="declares a picture of 64x48"):
        probe(video, MediaLimits(max_width=40, max_height=40))
    with pytest.raises(BadFrameRate):
        probe(video, MediaLimits(max_fps=24))


@pytest.mark.parametrize(("name", "fmt"), [("t.aiff", ("aiff", "pcm_s16be", "s16", 44100)),
                                           ("t.flac", ("flac", "flac", "s16", 44100))])  # fmt: skip
def test_other_cut_audio_formats_are_corrupt_media(tmp_path, name, fmt):
    # Siblings of the cut WAV: formats whose header states the length (AIFF) or whose frames break (FLAC).
    from media_fixtures import write_audio

    full = tmp_path / name
    write_audio(full, *fmt, seconds=6.0)
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 4 // 10])
    assert len(decode_audio(full)) == 6 * 16000
    with pytest.raises(CorruptMedia) as err:
        decode_audio(cut)
    assert err.value.field == "audio"


def test_reference_image_declaring_a_huge_picture_is_refused_before_decoding(tmp_path):
    from lipsync.faces.matching import load_image

    with pytest.raises(MediaTooLarge, match="declares a picture of 16000x16000") as err:
        load_image(_huge_png(tmp_path / "ref.png"))
    assert err.value.field == "characters"
