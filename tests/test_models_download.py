"""The downloader against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
import zipfile

import pytest

from http_fixture import closed_port_url, download_in_subprocess, payload, serving
from lipsync.errors import ChecksumMismatch, ModelDownloadError, ModelNotAvailable
from lipsync.models.archive import extract_zip
from lipsync.models.download import (
    DownloadOptions,
    download,
    read_verified_record,
    sha256_file,
)


@pytest.fixture
def http_server():
    with serving() as server:
        yield server


FAST = DownloadOptions(connect_timeout=2, read_timeout=2, retries=2, backoff=0.01)


def test_normal_download_is_atomic_and_verified(http_server, tmp_path):
    body = payload(300_000)
    http_server.add("w.pth", body)
    seen = []
    dest = download(
        http_server.url("w.pth"),
        tmp_path / "m" / "w.pth",
        hashlib.sha256(body).hexdigest(),
        progress=lambda done, total: seen.append((done, total)),
        options=FAST,
    )
    assert dest.read_bytes() == body
    assert not (tmp_path / "m" / "w.pth.part").exists()
    assert seen[-1] == (len(body), len(body))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert read_verified_record(dest) == hashlib.sha256(body).hexdigest()
    assert len(http_server.gets("w.pth")) == 1


def test_existing_file_is_not_downloaded_again(http_server, tmp_path):
    http_server.add("w.pth", b"new bytes")
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"already here")
    assert download(http_server.url("w.pth"), dest, options=FAST) == dest
    assert dest.read_bytes() == b"already here"
    assert http_server.gets("w.pth") == []


def test_interrupted_transfer_resumes_with_range(http_server, tmp_path):
    body = payload(500_000, seed=1)
    http_server.add("big.pth", body, drop_after=200_000, drop_times=1)
    dest = download(
        http_server.url("big.pth"), tmp_path / "big.pth", hashlib.sha256(body).hexdigest(), options=FAST
    )
    assert sha256_file(dest) == hashlib.sha256(body).hexdigest()
    gets = http_server.gets("big.pth")
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=")
    resumed_from = int(gets[1].range.split("=")[1].rstrip("-"))
    assert 0 < resumed_from <= 200_000


def test_leftover_part_from_another_run_is_resumed(http_server, tmp_path):
    body = payload(100_000, seed=2)
    http_server.add("x.pth", body)
    (tmp_path / "x.pth.part").write_bytes(body[:40_000])
    download(http_server.url("x.pth"), tmp_path / "x.pth", hashlib.sha256(body).hexdigest(), options=FAST)
    assert (tmp_path / "x.pth").read_bytes() == body
    assert [g.range for g in http_server.gets("x.pth")] == ["bytes=40000-"]


def test_server_ignoring_range_restarts_from_zero(http_server, tmp_path):
    body = payload(100_000, seed=3)
    http_server.add("x.pth", body, ignore_range=True)
    (tmp_path / "x.pth.part").write_bytes(b"garbage that must not be kept" * 100)
    download(http_server.url("x.pth"), tmp_path / "x.pth", hashlib.sha256(body).hexdigest(), options=FAST)
    assert (tmp_path / "x.pth").read_bytes() == body


def test_part_longer_than_file_gets_416_then_restarts(http_server, tmp_path):
    body = payload(10_000, seed=4)
    http_server.add("x.pth", body)
    (tmp_path / "x.pth.part").write_bytes(payload(20_000, seed=5))
    download(http_server.url("x.pth"), tmp_path / "x.pth", hashlib.sha256(body).hexdigest(), options=FAST)
    assert (tmp_path / "x.pth").read_bytes() == body
    assert [g.range for g in http_server.gets("x.pth")] == ["bytes=20000-", None]


def test_checksum_mismatch_deletes_and_explains(http_server, tmp_path):
    http_server.add("w.pth", b"these are not the bytes you are looking for")
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        download(http_server.url("w.pth"), tmp_path / "w.pth", wrong, options=FAST)
    message = info.value.message
    assert wrong in message and sha256_file_bytes(b"these are not the bytes you are looking for") in message
    assert info.value.expected == wrong
    assert not (tmp_path / "w.pth").exists()
    assert not (tmp_path / "w.pth.part").exists()


def test_404_fails_fast_without_retry_storm(http_server, tmp_path):
    http_server.add("gone.pth", status=404)
    start = time.monotonic()
    with pytest.raises(ModelDownloadError) as info:
        download(
            http_server.url("gone.pth"), tmp_path / "gone.pth", options=DownloadOptions(retries=5, backoff=1)
        )
    assert time.monotonic() - start < 1.0
    assert "404" in info.value.message and str(tmp_path / "gone.pth") in info.value.message
    assert len(http_server.gets("gone.pth")) == 1


def test_mirror_used_when_primary_404s(http_server, tmp_path):
    body = payload(5_000, seed=6)
    http_server.add("mirror.pth", body)
    dest = download(
        [http_server.url("primary.pth"), http_server.url("mirror.pth")],
        tmp_path / "w.pth",
        hashlib.sha256(body).hexdigest(),
        options=FAST,
    )
    assert dest.read_bytes() == body


def test_bad_bytes_on_primary_fall_back_to_mirror(http_server, tmp_path):
    body = payload(50_000, seed=12)
    http_server.add("primary.pth", payload(50_000, seed=13))  # a re-upload with other bytes
    http_server.add("mirror.pth", body)
    dest = download(
        [http_server.url("primary.pth"), http_server.url("mirror.pth")],
        tmp_path / "w.pth",
        hashlib.sha256(body).hexdigest(),
        options=FAST,
    )
    assert dest.read_bytes() == body
    assert http_server.gets("mirror.pth")[0].range is None  # started afresh, nothing spliced


def test_5xx_is_retried_with_backoff(http_server, tmp_path):
    route = http_server.add("flaky.pth", status=503)
    with pytest.raises(ModelDownloadError, match="503"):
        download(http_server.url("flaky.pth"), tmp_path / "f.pth", options=FAST)
    assert route.hits == FAST.retries + 1


def test_stalled_server_times_out_quickly(http_server, tmp_path):
    body = payload(200_000, seed=7)
    http_server.add("stall.pth", body, stall_after=50_000)
    options = DownloadOptions(connect_timeout=1, read_timeout=0.3, retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(ModelDownloadError, match="timed out"):
        download(http_server.url("stall.pth"), tmp_path / "s.pth", options=options)
    assert time.monotonic() - start < 5
    assert not (tmp_path / "s.pth").exists()
    # The second attempt asked for the rest, not the whole file again.
    assert http_server.gets("stall.pth")[1].range == "bytes=50000-"


def test_unreachable_network_names_file_url_and_path(tmp_path):
    url = closed_port_url("wav2lip_gan.pth")
    dest = tmp_path / "models" / "wav2lip_gan.pth"
    with pytest.raises(ModelNotAvailable) as info:
        download(url, dest, options=DownloadOptions(connect_timeout=1, retries=1, backoff=0.01))
    message = info.value.message
    assert "wav2lip_gan.pth" in message and url in message and str(dest) in message


def test_two_processes_download_once(http_server, tmp_path):
    body = payload(400_000, seed=8)
    http_server.add("shared.pth", body, throttle_s=0.1)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    dest = tmp_path / "shared.pth"
    procs = [
        ctx.Process(
            target=download_in_subprocess,
            args=(http_server.url("shared.pth"), str(dest), hashlib.sha256(body).hexdigest(), results),
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    assert outcomes == [("ok", str(dest))] * 2
    assert dest.read_bytes() == body
    assert len(http_server.gets("shared.pth")) == 1


def test_zip_extraction_picks_members_and_refuses_traversal(tmp_path):
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pack/a.onnx", b"A")
        zf.writestr("pack/b.onnx", b"B")
        zf.writestr("pack/readme.txt", b"ignored")
    out = extract_zip(
        archive, tmp_path / "pack", ["a.onnx", "b.onnx"], sha256={"a.onnx": sha256_file_bytes(b"A")}
    )
    assert sorted(p.name for p in (tmp_path / "pack").iterdir() if not p.name.endswith(".sha256")) == [
        "a.onnx",
        "b.onnx",
    ]
    assert out["b.onnx"].read_bytes() == b"B"

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.onnx", b"x")
    with pytest.raises(ModelDownloadError, match="unsafe path"):
        extract_zip(evil, tmp_path / "evil", None)
    assert not (tmp_path.parent / "escape.onnx").exists()

    with pytest.raises(ModelDownloadError, match="lacks"):
        extract_zip(archive, tmp_path / "other", ["missing.onnx"])

    with pytest.raises(ChecksumMismatch):
        extract_zip(archive, tmp_path / "bad", ["a.onnx"], sha256={"a.onnx": "1" * 64})
    assert not (tmp_path / "bad").exists()


def sha256_file_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sha256_file_matches_hashlib(tmp_path):
    data = payload(10_000_000, seed=9)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
