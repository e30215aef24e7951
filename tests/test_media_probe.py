"""probe(): exact frame rates, VFR detection, rotation, sizes, images, audio facts, limits and errors."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from lipsync.errors import CorruptMedia, MediaNotFound, MediaTooLarge, NotAMediaFile, NoVideoStream
from lipsync.media import MediaLimits, probe
from media_fixtures import AUDIO_FORMATS, write_audio, write_image, write_video


@pytest.mark.parametrize(
    ("fps", "text"),
    [(Fraction(24000, 1001), "24000/1001"), (Fraction(30000, 1001), "30000/1001"), (Fraction(60), "60")],
)
def test_cfr_rates_are_exact_fractions(tmp_path, fps, text):
    path = write_video(tmp_path / "clip.mp4", frames=24, fps=fps)
    info = probe(path)
    assert info.fps == fps and isinstance(info.fps, Fraction)
    assert not info.is_vfr
    assert info.num_frames == info.source_frames == 24
    assert info.video_duration == pytest.approx(24 / float(fps))
    assert info.to_dict()["fps"] == text
    assert (info.width, info.height, info.pix_fmt, info.video_codec) == (64, 48, "yuv420p", "h264")
    assert not info.has_audio and info.audio_sample_rate is None


def test_matroska_millisecond_timestamps_stay_cfr(tmp_path):
    # MKV stores 1 ms ticks, so 29.97 fps steps jitter 33/34 ms; that is not variable frame rate.
    path = write_video(tmp_path / "clip.mkv", frames=30, fps=Fraction(30000, 1001))
    info = probe(path)
    assert not info.is_vfr
    assert info.fps == Fraction(30000, 1001)
    assert info.num_frames == 30


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_real_vfr_clip(tmp_path, suffix):
    steps = [33, 67, 33, 100, 34, 33, 66, 33, 133, 33] * 4
    pts = [0]
    for step in steps:
        pts.append(pts[-1] + step)
    path = write_video(tmp_path / f"vfr{suffix}", pts=pts, time_base=Fraction(1, 1000), fps=30)
    info = probe(path)
    assert info.is_vfr
    assert info.source_frames == len(pts)
    # The average rate is frames / duration, well below the nominal 30 the encoder was told.
    assert 15 < float(info.fps) < 20
    assert info.num_frames == len(pts)
    assert info.to_dict()["is_vfr"] is True


@pytest.mark.parametrize(("ccw", "expected"), [(90, 270), (-90, 90), (180, 180), (0, 0)])
def test_rotation_from_display_matrix(tmp_path, ccw, expected):
    path = write_video(tmp_path / "rot.mp4", frames=3, width=64, height=48, rotation_ccw=ccw)
    info = probe(path)
    assert info.rotation == expected
    assert (info.width, info.height) == (64, 48)
    if expected in (90, 270):
        assert (info.display_width, info.display_height) == (48, 64)
    else:
        assert (info.display_width, info.display_height) == (64, 48)


def test_rotation_from_rotate_tag(tmp_path):
    path = write_video(tmp_path / "rot.mkv", frames=3, rotate_tag="90", container_format="matroska")
    info = probe(path)
    assert info.rotation == 90
    assert (info.display_width, info.display_height) == (48, 64)


def test_odd_dimensions_reported_as_stored(tmp_path):
    # H.264 4:4:4 stores odd sizes exactly (4:2:0 cannot).
    path = write_video(tmp_path / "odd.mp4", frames=4, width=65, height=49, pix_fmt="yuv444p")
    info = probe(path)
    assert (info.width, info.height, info.display_width, info.display_height) == (65, 49, 65, 49)
    assert info.pix_fmt == "yuv444p"
    write_image(tmp_path / "odd.png", width=37, height=23)
    assert (probe(tmp_path / "odd.png").width, probe(tmp_path / "odd.png").height) == (37, 23)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_still_image_is_one_frame_video(tmp_path, suffix):
    write_image(tmp_path / f"still{suffix}")
    info = probe(tmp_path / f"still{suffix}")
    assert info.is_image and info.has_video
    assert info.num_frames == 1
    assert info.fps == 25
    assert probe(tmp_path / f"still{suffix}", image_fps=Fraction(30000, 1001)).fps == Fraction(30000, 1001)
    assert (info.width, info.height) == (40, 30)


def test_audio_facts_of_audio_file(tmp_path):
    fmt, codec, sample_fmt, rate = AUDIO_FORMATS["s16.wav"]
    write_audio(tmp_path / "a.wav", fmt, codec, sample_fmt, rate, seconds=1.5, channels=2)
    info = probe(tmp_path / "a.wav")
    assert not info.has_video and info.has_audio
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)
    assert info.audio_duration == pytest.approx(1.5, abs=1e-3)
    assert info.duration == pytest.approx(1.5, abs=1e-3)
    assert info.num_frames == 0 and info.fps == 0
    with pytest.raises(NoVideoStream, match="no video stream"):
        info.require_video()


def test_audio_facts_of_video_with_sound(tmp_path):
    path = write_video(tmp_path / "av.mp4", frames=25, fps=25, audio_seconds=1.0, audio_rate=22050)
    info = probe(path)
    assert info.has_audio and info.audio_sample_rate == 22050 and info.audio_channels == 1
    assert info.audio_duration == pytest.approx(1.0, abs=0.05)
    assert info.require_audio() is info


def test_to_dict_is_json(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=5, fps=Fraction(30000, 1001))
    data = json.loads(json.dumps(probe(path).to_dict()))
    assert data["fps"] == "30000/1001" and data["num_frames"] == 5 and data["path"].endswith("clip.mp4")


# --- errors ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(MediaNotFound, match=r"no such file\. Check the path") as err:
        probe(tmp_path / "nope.mp4")
    assert err.value.code == "media_not_found"


def test_html_renamed_mp4_is_not_media(tmp_path):
    path = tmp_path / "video.mp4"
    path.write_text("<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n")
    with pytest.raises(NotAMediaFile, match="not a media file") as err:
        probe(path)
    assert "HTML" in err.value.message and "mp4" in err.value.message
    assert err.value.code == "not_media"


def test_text_and_empty_files_are_not_media(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("just some words, nothing to see\n" * 20)
    with pytest.raises(NotAMediaFile, match="plain text"):
        probe(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(NotAMediaFile, match=r"empty \(0 bytes\)"):
        probe(empty)
    with pytest.raises(NotAMediaFile, match="directory"):
        probe(tmp_path)


def test_truncated_mp4_without_index_is_corrupt_not_unknown(tmp_path):
    # Without faststart the index (moov) is written last; a cut-off download loses it.
    path = write_video(tmp_path / "clip.mp4", frames=30)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMedia, match=r"looks like MP4/MOV.*truncated or damaged") as err:
        probe(cut)
    assert err.value.code == "corrupt_media"


def test_dimension_limit(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=3, width=64, height=48)
    with pytest.raises(MediaTooLarge, match=r"64x48; the limit is 32x4096.*LIPSYNC_MAX_WIDTH") as err:
        probe(path, limits=MediaLimits(max_width=32))
    assert err.value.http_status == 413
    # Display size counts: rotated 64x48 is 48 wide, within a 50-wide limit but 64 tall.
    rotated = write_video(tmp_path / "rot.mp4", frames=3, width=64, height=48, rotation_ccw=90)
    assert probe(rotated, limits=MediaLimits(max_width=50, max_height=64)).display_width == 48
    with pytest.raises(MediaTooLarge, match="48x64"):
        probe(rotated, limits=MediaLimits(max_width=64, max_height=50))


def test_duration_limit(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=50, fps=25)
    with pytest.raises(MediaTooLarge, match=r"lasts 2\.0 s; the limit is 1 s.*LIPSYNC_MAX_DURATION_S"):
        probe(path, limits=MediaLimits(max_duration_s=1.0))
    assert probe(path, limits=MediaLimits(max_duration_s=3.0)).num_frames == 50


def test_default_limits():
    limits = MediaLimits()
    assert (limits.max_width, limits.max_height, limits.max_duration_s) == (4096, 4096, 3 * 3600)


def test_raw_h264_elementary_stream(tmp_path):
    # No container index and no stored duration: frames are counted from the packets.
    path = write_video(tmp_path / "raw.h264", frames=20, fps=25, container_format="h264")
    info = probe(path)
    assert info.format_name == "h264"
    assert (info.fps, info.num_frames, info.is_vfr) == (25, 20, False)
