"""The tracking cache: hits across runs and processes' shared folder, keys, corrupt and stale entries, LRU
bounds, and the switch that turns it off."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import Settings
from lipsync.faces import TrackingOptions
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from lipsync.stages import track_cache as tc
from lipsync.stages.track_cache import TrackCache, cache_key
from lipsync.types import Box, Character, Track, TrackPoint
from pipeline_fixtures import (
    ColorFaceBackend,
    FaceSpec,
    IdentityGenerator,
    moving_box,
    write_reference_image,
    write_speechlike_wav,
    write_synthetic_video,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache_media")
    spec = FaceSpec("red", moving_box(40, 30, 64, 84, dx=0.5))
    return {
        "video": write_synthetic_video(d / "v.mp4", [spec], seconds=1.0),
        "audio": write_speechlike_wav(d / "a.wav", 1.0),
        "red": write_reference_image(d / "red.png", "red"),
    }


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(track_cache=True, track_cache_dir=tmp_path / "cache", **kw)


def _run(settings, media, out: Path, backend=None, **options):
    backend = backend or ColorFaceBackend()
    pipe = LipSyncPipeline(settings, generator=IdentityGenerator(), face_backend=backend)
    opts = LipSyncOptions(enhance="off", loop_mode="none", **options)
    return pipe(LipSyncRequest(media["video"], media["audio"], out, (), opts)), backend


def _same(a: list[Track], b: list[Track]) -> None:
    assert [t.character_id for t in a] == [t.character_id for t in b]
    for x, y in zip(a, b, strict=True):
        assert set(x.points) == set(y.points)
        for f, p in x.points.items():
            q = y.points[f]
            assert p.box == q.box and np.array_equal(p.landmarks, q.landmarks)
            assert p.similarity == q.similarity and p.interpolated == q.interpolated


def test_second_run_reuses_the_tracks_and_renders_the_same(tmp_path, media):
    settings = _settings(tmp_path)
    first, backend1 = _run(settings, media, tmp_path / "a.mp4")
    assert backend1.detect_calls > 0 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second, backend2 = _run(settings, media, tmp_path / "b.mp4")
    assert backend2.detect_calls == 0  # tracks came from the cache: no detection at all
    assert "track" not in second.stats.stage_seconds
    _same(first.tracks, second.tracks)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_face_tracking_and_lipsync_share_the_entry(tmp_path, media):
    settings = _settings(tmp_path)
    pipe = LipSyncPipeline(settings, generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    tracked = pipe.track(media["video"])
    backend = ColorFaceBackend()
    pipe2 = LipSyncPipeline(settings, generator=IdentityGenerator(), face_backend=backend)
    again = pipe2.track(media["video"])
    assert backend.detect_calls == 0
    _same(tracked.tracks, again.tracks)


def test_a_different_setting_video_character_or_backend_misses(tmp_path, media):
    opts = TrackingOptions()
    base = cache_key(media["video"], [], opts, "color", 25)
    assert base == cache_key(media["video"], [], TrackingOptions(), "color", 25)
    assert base != cache_key(media["video"], [], TrackingOptions(sample_every=3), "color", 25)
    assert base != cache_key(media["video"], [], opts, "dlib", 25)
    assert base != cache_key(media["video"], [], opts, "color", 24)
    chars = [Character("red", "Red", (media["red"],))]
    assert base != cache_key(media["video"], chars, opts, "color", 25)
    # Content, not the name: a copy hits, the same name with other bytes misses.
    copy = tmp_path / "copy.mp4"
    shutil.copy(media["video"], copy)
    assert cache_key(copy, [], opts, "color", 25) == base
    copy.write_bytes(copy.read_bytes()[:-10] + b"0123456789")
    assert cache_key(copy, [], opts, "color", 25) != base


def _track(n: int) -> Track:
    t = Track("face", "face")
    for f in range(n):
        t.points[f] = TrackPoint(f, Box(1.0 * f, 2.0, 30.0 + f, 40.5), np.full((5, 2), f, np.float32), 0.9, f % 2 == 1)
    return t


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "garbage", "other_key", "out_of_range"])
def test_a_corrupt_or_stale_entry_is_ignored_deleted_and_rebuilt(tmp_path, damage, media):
    cache = TrackCache(tmp_path / "c")
    cache.put("k" * 64, [_track(10)])
    path = cache.path("k" * 64)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_bytes":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :])
    elif damage == "garbage":
        path.write_bytes(b"not a cache entry at all")
    elif damage == "other_key":
        shutil.copy(path, cache.path("j" * 64))
        path = cache.path("j" * 64)
    assert cache.get("k" * 64 if damage != "other_key" else "j" * 64, 5 if damage == "out_of_range" else 10) is None
    assert not path.exists()
    # ... and a real run over a bad entry tracks again and stores a good one.
    settings = _settings(tmp_path)
    first, _ = _run(settings, media, tmp_path / "a.mp4")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"\0" * 100)
    second, backend = _run(settings, media, tmp_path / "b.mp4")
    assert backend.detect_calls > 0
    _same(first.tracks, second.tracks)
    assert TrackCache(tmp_path / "cache").get(entry.stem, 25) is not None


def test_a_new_tracker_version_makes_old_entries_stale(tmp_path, media, monkeypatch):
    settings = _settings(tmp_path)
    _run(settings, media, tmp_path / "a.mp4")
    monkeypatch.setattr(tc, "TRACKER_VERSION", tc.TRACKER_VERSION + 1)
    _, backend = _run(settings, media, tmp_path / "b.mp4")
    assert backend.detect_calls > 0


def test_roundtrip_is_exact(tmp_path):
    cache = TrackCache(tmp_path)
    tracks = [_track(7), Track("other", "Other")]
    cache.put("a" * 64, tracks)
    _same(tracks, cache.get("a" * 64, 7))


def test_lru_eviction_by_entries_and_bytes(tmp_path):
    cache = TrackCache(tmp_path, max_entries=3, max_bytes=10**9)
    for i, key in enumerate("abcd"):
        cache.put(key * 64, [_track(5)])
        os.utime(cache.path(key * 64), (time.time() - 100 + i, time.time() - 100 + i))
        if key == "c":
            assert cache.get("a" * 64, 5) is not None  # "a" used again: "b" is now the oldest
    assert sorted(p.stem[0] for p in tmp_path.glob("*.npz")) == ["a", "c", "d"]
    size = cache.path("a" * 64).stat().st_size
    small = TrackCache(tmp_path, max_entries=100, max_bytes=2 * size + size // 2)
    small.put("e" * 64, [_track(5)])
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert small.path("e" * 64).exists()


def test_the_cache_can_be_turned_off_by_setting_and_env(tmp_path, media, monkeypatch):
    assert TrackCache.from_settings(Settings(track_cache=False)) is None
    monkeypatch.setenv("LIPSYNC_TRACK_CACHE", "false")
    assert TrackCache.from_settings(Settings()) is None
    monkeypatch.setenv("LIPSYNC_TRACK_CACHE", "true")
    monkeypatch.setenv("LIPSYNC_WORK_DIR", str(tmp_path / "work"))
    assert TrackCache.from_settings(Settings()).folder == tmp_path / "work" / "track-cache"
    off = Settings(track_cache=False, track_cache_dir=tmp_path / "off")
    _run(off, media, tmp_path / "a.mp4")
    _, backend = _run(off, media, tmp_path / "b.mp4")
    assert backend.detect_calls > 0 and not (tmp_path / "off").exists()


def _tampered(cache: TrackCache, key: str, change) -> Path:
    """An entry written as put writes it, then one member changed by ``change(arrays)`` (a well-formed
    zip: only the content checks can catch it)."""
    arrays = tc._arrays(key, [_track(10)])
    change(arrays)
    cache.folder.mkdir(parents=True, exist_ok=True)
    with cache.path(key).open("wb") as fh:
        np.savez(fh, **arrays)
    return cache.path(key)


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.__setitem__("boxes0", a["boxes0"].astype(np.float32)),  # dtype
        lambda a: a.__setitem__("landmarks0", a["landmarks0"].reshape(-1, 10)),  # shape
        lambda a: a.__setitem__("similarity0", a["similarity0"][:-1]),  # length
        lambda a: a["boxes0"].__setitem__((3, 1), np.nan),  # non-finite
        lambda a: a["landmarks0"].__setitem__((2, 0, 0), np.inf),
        lambda a: a.__setitem__("frames0", a["frames0"][::-1].copy()),  # out of order
        lambda a: a.pop("interpolated0"),  # a member missing
        lambda a: a.__setitem__("meta", np.frombuffer(b"{not json", np.uint8)),
    ],
    ids=["dtype", "shape", "length", "nan_box", "inf_landmark", "order", "missing", "meta"],
)
def test_an_entry_failing_a_content_check_is_ignored_and_deleted(tmp_path, change, caplog):
    cache = TrackCache(tmp_path / "c")
    path = _tampered(cache, "k" * 64, change)
    with caplog.at_level("WARNING", logger="lipsync.stages.track_cache"):
        assert cache.get("k" * 64, 10) is None
    assert not path.exists()
    assert "ignoring the bad entry" in caplog.text
    # The untampered entry reads back, so it is the change that was caught.
    good = _tampered(cache, "g" * 64, lambda a: None)
    assert cache.get("g" * 64, 10) is not None and good.exists()


def test_a_cache_that_cannot_be_written_only_logs(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = TrackCache(blocker / "cache")
    with caplog.at_level("WARNING", logger="lipsync.stages.track_cache"):
        cache.put("k" * 64, [_track(3)])  # raises nothing
    assert "could not store tracks" in caplog.text
    assert cache.get("k" * 64, 3) is None


def test_the_backend_fingerprint_follows_its_model_files(tmp_path):
    class Backend:
        name = "scrfd"

        def __init__(self):
            self.det_size = 320
            self.detector = None
            self.recognizer = None

    det = tmp_path / "det.onnx"
    det.write_bytes(b"x" * 100)
    settings = Settings(det_model=str(det))
    before = tc.backend_fingerprint(Backend(), settings)
    assert before == tc.backend_fingerprint(Backend(), settings)
    det.write_bytes(b"y" * 120)  # another detector file: its tracks are not these
    assert tc.backend_fingerprint(Backend(), settings) != before
    other = Backend()
    other.det_size = 640
    assert tc.backend_fingerprint(other, settings) != tc.backend_fingerprint(Backend(), settings)

    class Named(Backend):
        cache_id = "my-backend-v2"

    assert tc.backend_fingerprint(Named(), settings) == "my-backend-v2"
