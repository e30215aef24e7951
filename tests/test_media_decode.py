"""iter_frames / FrameReader: CFR mapping by timestamp, rotation, images, random access, corruption."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest

from lipsync.errors import CorruptMedia, NoVideoStream
from lipsync.media import FrameReader, iter_frames, probe
from media_fixtures import index_frame, read_index, write_audio, write_image, write_video

VFR_STEPS = [33, 67, 33, 100, 34, 33, 66, 33, 133, 33, 17, 16, 50]


def _vfr_pts() -> list[int]:
    pts = [0]
    for step in VFR_STEPS * 4:
        pts.append(pts[-1] + step)
    return pts


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    return write_video(
        tmp_path_factory.mktemp("vfr") / "vfr.mp4", pts=_vfr_pts(), time_base=Fraction(1, 1000)
    )


@pytest.fixture(scope="module")
def cfr_clip(tmp_path_factory):
    # Short GOP so seeks land on many different keyframes.
    return write_video(tmp_path_factory.mktemp("cfr") / "cfr.mp4", frames=90, fps=Fraction(30000, 1001))


@pytest.fixture(scope="module")
def bframe_vfr_clip(tmp_path_factory):
    # B-frames (decode order != display order) and a keyframe every 8 frames: seeks land on keyframes
    # whose DTS is before their PTS, which the reader must handle.
    return write_video(
        tmp_path_factory.mktemp("bvfr") / "bvfr.mp4",
        pts=_vfr_pts(),
        time_base=Fraction(1, 1000),
        preset="medium",
        gop=8,
    )


def _expected_sources(pts_ms: list[int], fps: Fraction, n: int) -> list[int]:
    """Independent statement of the mapping: output i shows the last source frame at or before
    (i + 1/2) / fps, i.e. nearest-timestamp with ties to the later frame; frame 0 at least."""
    out = []
    for i in range(n):
        limit = (Fraction(i) + Fraction(1, 2)) / fps
        candidates = [j for j, t in enumerate(pts_ms) if Fraction(t, 1000) < limit]
        out.append(candidates[-1] if candidates else 0)
    return out


def test_cfr_decode_is_every_frame_in_order(cfr_clip):
    frames = list(iter_frames(cfr_clip))
    assert len(frames) == probe(cfr_clip).num_frames == 90
    assert [read_index(f) for f in frames] == list(range(90))
    assert all(f.dtype == np.uint8 and f.shape == (48, 64, 3) and f.flags.c_contiguous for f in frames)


def test_frames_are_bgr(tmp_path):
    path = write_video(tmp_path / "c.mp4", frames=2)
    frame = next(iter_frames(path))
    b, g, r = frame[30, 4].astype(int)  # inside the red marker
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("clip", ["vfr_clip", "bframe_vfr_clip"])
def test_vfr_maps_to_cfr_by_timestamp(request, clip):
    path = request.getfixturevalue(clip)
    info = probe(path)
    frames = [read_index(f) for f in iter_frames(path, info=info)]
    pts = _vfr_pts()
    assert len(frames) == info.num_frames == len(pts)
    assert frames == [j % 256 for j in _expected_sources(pts, info.fps, info.num_frames)]
    # Gaps become duplicates and bursts become drops, so both must happen in this clip.
    assert len(set(frames)) < len(frames)
    assert max(frames) == len(pts) - 1


def test_shared_vfr_clip_decodes_to_average_rate(shared_media):
    path = shared_media("talking_vfr_700x700_avg22fps.mp4")
    info = probe(path)
    frames = list(iter_frames(path, info=info))
    assert len(frames) == info.num_frames == 135
    assert frames[0].shape == (700, 700, 3)


def test_rotation_is_applied(tmp_path):
    upright = index_frame(0, 64, 48)
    for ccw, expected in [
        (-90, np.rot90(upright, k=-1)),
        (90, np.rot90(upright, k=1)),
        (180, np.rot90(upright, 2)),
    ]:
        path = write_video(tmp_path / f"r{ccw}.mp4", frames=2, rotation_ccw=ccw)
        frame = next(iter_frames(path))
        assert frame.shape == expected.shape
        assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 6, ccw
    tagged = write_video(tmp_path / "tag.mkv", frames=2, rotate_tag="90", container_format="matroska")
    frame = next(iter_frames(tagged))
    assert np.abs(frame.astype(int) - np.rot90(upright, k=-1).astype(int)).mean() < 6


def test_odd_dimensions_decode(tmp_path):
    path = write_video(tmp_path / "odd.mp4", frames=3, width=65, height=49, pix_fmt="yuv444p")
    frames = list(iter_frames(path))
    assert [f.shape for f in frames] == [(49, 65, 3)] * 3
    assert [read_index(f) for f in frames] == [0, 1, 2]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_still_image_yields_one_frame(tmp_path, suffix):
    pixels = write_image(tmp_path / f"s{suffix}")
    frames = list(iter_frames(tmp_path / f"s{suffix}"))
    assert len(frames) == 1
    assert frames[0].shape == pixels.shape
    assert np.abs(frames[0].astype(int) - pixels.astype(int)).mean() < 8
    with FrameReader(tmp_path / f"s{suffix}") as reader:
        assert len(reader) == 1 and np.array_equal(reader[0], frames[0])


def test_start_skips_frames(cfr_clip):
    assert [read_index(f) for f in iter_frames(cfr_clip, start=61)] == list(range(61, 90))
    assert list(iter_frames(cfr_clip, start=90)) == []


def test_iter_frames_is_lazy(cfr_clip):
    gen = iter_frames(cfr_clip)
    first = next(gen)
    gen.close()  # must release the container without decoding the rest
    assert read_index(first) == 0


@pytest.mark.parametrize("clip", ["cfr_clip", "vfr_clip", "bframe_vfr_clip"])
def test_reader_matches_stream_in_any_order(request, clip):
    path = request.getfixturevalue(clip)
    info = probe(path)
    stream = list(iter_frames(path, info=info))
    n = len(stream)
    forward = list(range(n))
    pingpong = forward + forward[-2:0:-1] + forward
    rng = np.random.default_rng(7)
    scattered = [int(i) for i in rng.integers(0, n, 25)]
    with FrameReader(path, info=info, block=8) as reader:
        assert len(reader) == n
        for i in pingpong + scattered + [-1]:
            assert np.array_equal(reader[i], stream[i]), i
        assert len(reader._cache) <= reader.max_blocks
    with pytest.raises(IndexError):
        reader.get(n)


def test_reader_reads_forward_without_reseeking(cfr_clip):
    with FrameReader(cfr_clip, block=10, max_blocks=3) as reader:
        _ = [reader[i] for i in range(len(reader))]
        assert reader.seeks == 1
        # Backward (pingpong) seeks once per run of max_blocks blocks, not once per frame or block.
        _ = [reader[i] for i in range(len(reader) - 1, -1, -1)]
        assert reader.seeks <= 1 + math.ceil(len(reader) / 30) + 1
        # Turning forward again at frame 0 continues from the cache and the open decoder.
        before = reader.seeks
        _ = [reader[i] for i in range(len(reader))]
        assert reader.seeks <= before + 1


def test_reader_memory_is_bounded(cfr_clip):
    with FrameReader(cfr_clip, block=4, max_blocks=3) as reader:
        for i in [*range(len(reader)), *range(len(reader) - 1, -1, -1)]:
            reader.get(i)
            assert sum(len(b) for b in reader._cache.values()) <= 12
    # A byte budget shrinks the blocks for large frames: here 5 frames of 64x48 per block.
    with FrameReader(cfr_clip, block=32, max_blocks=2, max_bytes=2 * 5 * 64 * 48 * 3) as reader:
        assert reader.block == 5
        reader.get(len(reader) - 1)
        reader.get(0)
        assert sum(len(b) for b in reader._cache.values()) <= 10


# --- errors ---------------------------------------------------------------------------------------


def test_audio_only_has_no_video(tmp_path):
    write_audio(tmp_path / "a.wav", "wav", "pcm_s16le", "s16", 16000)
    with pytest.raises(NoVideoStream, match=r"a\.wav has no video stream.*mp4") as err:
        next(iter_frames(tmp_path / "a.wav"))
    assert err.value.code == "no_video_stream"
    with pytest.raises(NoVideoStream):
        FrameReader(tmp_path / "a.wav")


def _faststart_clip(tmp_path):
    return write_video(tmp_path / "fs.mp4", frames=60, width=96, height=64, faststart=True)


def test_truncated_at_packet_boundary_is_corrupt(tmp_path):
    """The index says 60 frames, the data stops after 30: an error, never a silently shorter video."""
    path = _faststart_clip(tmp_path)
    with av.open(str(path)) as container:
        entries = container.streams.video[0].index_entries
        cut_at = entries[30].pos
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:cut_at])
    info = probe(cut)  # the header is intact, so probe still believes in 60 frames
    assert info.num_frames == 60
    with pytest.raises(CorruptMedia, match=r"ends early.*truncated; re-export or re-download") as err:
        list(iter_frames(cut, info=info))
    assert err.value.code == "corrupt_media"


def test_truncated_mid_packet_is_corrupt(tmp_path):
    path = _faststart_clip(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(CorruptMedia, match="re-export or re-download"):
        list(iter_frames(cut))
    with FrameReader(cut) as reader, pytest.raises(CorruptMedia):
        reader[len(reader) - 1]


def test_garbage_in_the_middle_is_corrupt(tmp_path):
    path = _faststart_clip(tmp_path)
    with av.open(str(path)) as container:
        entries = container.streams.video[0].index_entries
        lo, hi = entries[20].pos, entries[45].pos + entries[45].size
    data = bytearray(path.read_bytes())
    data[lo:hi] = b"\x00" * (hi - lo)  # a zeroed region, as from a bad disk block or partial copy
    bad = tmp_path / "zeroed.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptMedia):
        list(iter_frames(bad))
