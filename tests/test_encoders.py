"""Encoder choice: per-device crf/preset defaults resolved in one function, NVENC detected and refused
with a log line where there is none, libx264 with frame threads, threaded decode."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from lipsync.errors import EncodeError
from lipsync.media import VideoWriter, iter_frames
from lipsync.media.encoders import DEVICE_DEFAULTS, EncoderSettings, nvenc_available, resolve_encoder
from lipsync.options import LipSyncOptions, OptionsInvalid, field_choices, parse_options

HAS_NVENC = nvenc_available()


def test_unset_crf_and_preset_resolve_per_device():
    options = LipSyncOptions()
    assert options.crf is None and options.preset is None and options.encoder == "libx264"
    for device, (preset, crf) in DEVICE_DEFAULTS.items():
        enc = resolve_encoder(options.encoder, options.crf, options.preset, device)
        assert (enc.codec, enc.preset, enc.crf) == ("libx264", preset, crf)
    # A device string with an index, and a generator double's "custom", resolve like cuda and cpu.
    assert resolve_encoder("libx264", None, None, "cuda:1").preset == DEVICE_DEFAULTS["cuda"][0]
    assert resolve_encoder("libx264", None, None, "custom").preset == DEVICE_DEFAULTS["cpu"][0]
    # Given values win over the device's.
    enc = resolve_encoder("libx264", 30, "ultrafast", "cpu")
    assert (enc.crf, enc.preset) == (30, "ultrafast")


def test_encoder_options_are_validated_and_listed_for_help():
    with pytest.raises(OptionsInvalid, match="encoder"):
        parse_options(LipSyncOptions, {"encoder": "x265"})
    with pytest.raises(OptionsInvalid, match="preset"):
        parse_options(LipSyncOptions, {"preset": "warp"})
    assert field_choices(LipSyncOptions.model_fields["preset"])[0] == "ultrafast"
    assert field_choices(LipSyncOptions.model_fields["encoder"]) == ("auto", "libx264", "h264_nvenc")


@pytest.mark.skipif(HAS_NVENC, reason="this machine has NVENC: the fallback cannot be seen here")
def test_nvenc_requested_without_one_falls_back_to_libx264_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="lipsync.media.encoders"):
        enc = resolve_encoder("h264_nvenc", None, None, "cuda")
    assert enc.codec == "libx264"
    assert any("no usable NVENC" in r.getMessage() for r in caplog.records)
    assert resolve_encoder("auto", None, None, "cuda").codec == "libx264"


def test_auto_never_picks_nvenc_on_a_cpu_job():
    assert resolve_encoder("auto", None, None, "cpu").codec == "libx264"


def test_nvenc_options_map_crf_and_preset():
    opts = EncoderSettings("h264_nvenc", 0, "veryfast").stream_options()
    assert opts["cq"] == "1" and opts["preset"] == "p2" and opts["rc"] == "vbr"
    assert EncoderSettings("libx264", 20, "faster").stream_options() == {"crf": "20", "preset": "faster"}


def _frames(n: int = 12, w: int = 96, h: int = 64) -> list[np.ndarray]:
    # Smooth colours: 4:2:0 chroma keeps them (random noise would not survive the subsampling).
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 2, yy * 3, (xx + yy)], -1).astype(np.uint8)
    return [np.roll(base, i, axis=1) for i in range(n)]


def test_libx264_writer_uses_frame_threads_and_roundtrips(tmp_path):
    out = tmp_path / "v.mp4"
    frames = _frames()
    with VideoWriter(out, 96, 64, 25, crf=0, preset="veryfast") as writer:
        ctx = writer._vstream.codec_context
        assert ctx.thread_type == av.codec.context.ThreadType.FRAME
        for f in frames:
            writer.write(f)
    back = list(iter_frames(out))
    assert len(back) == len(frames)
    # crf 0 is lossless in YUV; BGR<->YUV rounding stays within a few levels.
    assert np.abs(back[3].astype(int) - frames[3].astype(int)).mean() < 3


def test_writer_refuses_an_encoder_that_cannot_open(tmp_path):
    if HAS_NVENC:
        pytest.skip("this machine has NVENC")
    with pytest.raises(EncodeError, match="cannot create"):
        VideoWriter(tmp_path / "v.mp4", 96, 64, 25, codec="h264_nvenc")
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_NVENC, reason="needs a GPU with an NVENC engine (H100/H200 have none)")
def test_nvenc_writer_roundtrips(tmp_path):
    out = tmp_path / "v.mp4"
    frames = _frames(w=256, h=128)
    with VideoWriter(out, 256, 128, 25, crf=18, preset="veryfast", codec="h264_nvenc") as writer:
        for f in frames:
            writer.write(f)
    assert len(list(iter_frames(out))) == len(frames)


def test_the_default_preset_comes_with_the_light_motion_search_and_a_named_one_is_plain(tmp_path):
    from lipsync.media.encoders import LIGHT_MOTION

    enc = resolve_encoder("libx264", None, None, "cpu")
    assert enc.x264_params == LIGHT_MOTION
    assert enc.stream_options()["x264-params"] == LIGHT_MOTION
    named = resolve_encoder("libx264", None, DEVICE_DEFAULTS["cpu"][0], "cpu")
    assert named.x264_params == "" and "x264-params" not in named.stream_options()
    # The options reach x264: its settings string (an SEI in the stream) names them.
    out = tmp_path / "light.mp4"
    frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with VideoWriter(out, 96, 64, 25, crf=18, preset=enc.preset, x264_params=enc.x264_params) as writer:
        for _ in range(3):
            writer.write(frame)
    settings = out.read_bytes()
    assert b"me=dia" in settings and b"subme=1" in settings
