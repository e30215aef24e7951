"""Fast, in-process tests of the API's building blocks: job store and runner, SSRF guard, sniffing,
webhook signatures, request schemas. The real-server tests are in test_api_server.py / test_api_full.py."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from api_fixtures import AssetServer
from lipsync.api.fetch import Fetcher, FetchLimits, sniff
from lipsync.api.netguard import address_problem, check_url, check_url_syntax, redact
from lipsync.api.schemas import LipSyncIn
from lipsync.api.upload import Uploader
from lipsync.config import Settings
from lipsync.errors import (
    DownloadTooLarge,
    FetchError,
    FetchTimeout,
    JobCancelled,
    JobNotFound,
    MediaNotFound,
    NoFaceFound,
    NotAMediaFile,
    QueueFull,
    UnsafeURL,
    UploadRejected,
)
from lipsync.jobs import JobRunner, JobStore, sign, verify
from lipsync.jobs.models import MAX_ATTEMPTS

# --- store --------------------------------------------------------------------------------------------


def test_store_roundtrip_and_queue_bound(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    a = store.create("lipsync", {"video_url": "http://x/v.mp4"}, webhook_url="http://x/hook", max_queued=2)
    store.create("lipsync", {}, max_queued=2)
    with pytest.raises(QueueFull) as exc:
        store.create("lipsync", {}, max_queued=2)
    assert exc.value.http_status == 429
    assert store.queued_ids()[0] == a.id
    got = store.get(a.id)
    assert (got.status, got.params, got.webhook_url, got.attempts) == ("queued", {"video_url": "http://x/v.mp4"},
                                                                      "http://x/hook", 0)
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_store_recover_retries_once_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = store.create("lipsync", {})
    assert store.mark_running(job.id).attempts == 1
    store.close()
    # Crash during attempt 1: requeued.
    store = JobStore(path)
    assert store.recover() == ([job.id], [])
    assert store.get(job.id).status == "queued"
    assert store.mark_running(job.id).attempts == MAX_ATTEMPTS
    store.close()
    # Crash during attempt 2: failed with a reason.
    store = JobStore(path)
    assert store.recover() == ([], [job.id])
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "interrupted" and "2 attempts" in failed.error.message


# --- runner -------------------------------------------------------------------------------------------


def _wait(store: JobStore, job_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = store.get(job_id)
        if rec.is_final:
            return rec
        time.sleep(0.01)
    raise TimeoutError(job_id)


def test_runner_runs_reports_progress_and_cleans_scratch(tmp_path: Path) -> None:
    seen_dirs: list[Path] = []

    def work(job, ctx):
        seen_dirs.append(ctx.workdir)
        (ctx.workdir / "big.tmp").write_bytes(b"x" * 1000)
        for i in range(3):
            ctx.progress("stage", i + 1, 3)
        if job.params.get("fail") == "input":
            raise NoFaceFound("no face", field="video")
        if job.params.get("fail") == "bug":
            raise RuntimeError("boom")
        return {"ok": job.params["n"]}

    store = JobStore(tmp_path / "db.sqlite3")
    runner = JobRunner(store, work, scratch_dir=tmp_path / "tmp", workers=2)
    finished: list[str] = []
    runner.add_listener(lambda rec: finished.append(rec.status))
    runner.start()
    try:
        ok = runner.submit("lipsync", {"n": 1})
        bad = runner.submit("lipsync", {"n": 2, "fail": "input"})
        bug = runner.submit("lipsync", {"n": 3, "fail": "bug"})
        r_ok, r_bad, r_bug = (_wait(store, j.id) for j in (ok, bad, bug))
    finally:
        runner.stop()
    assert r_ok.status == "succeeded" and r_ok.result == {"ok": 1}
    assert r_ok.progress["stage"].done == 3 and r_ok.progress["stage"].total == 3
    assert r_bad.status == "failed" and r_bad.error.code == "no_face_found" and r_bad.error.http_status == 422
    assert r_bug.status == "failed" and r_bug.error.code == "internal_error" and "boom" not in r_bug.error.message
    assert sorted(finished) == ["failed", "failed", "succeeded"]
    assert seen_dirs and not any(d.exists() for d in seen_dirs)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_runner_cancels_queued_and_running(tmp_path: Path) -> None:
    started = threading.Event()
    observed: list[str] = []

    def work(job, ctx):
        started.set()
        try:
            for i in range(500):
                ctx.progress("loop", i, 500)
                time.sleep(0.01)
        except JobCancelled:
            observed.append("cancelled-inside")
            raise
        return {}

    store = JobStore(tmp_path / "db.sqlite3")
    runner = JobRunner(store, work, scratch_dir=tmp_path / "tmp", workers=1)
    runner.start()
    try:
        running = runner.submit("lipsync", {})
        queued = runner.submit("lipsync", {})
        assert started.wait(5)
        assert runner.cancel(queued.id).status == "cancelled"
        assert runner.cancel(running.id).status == "cancelled"
        deadline = time.monotonic() + 5
        while runner.running_jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.running_jobs == 0
    finally:
        runner.stop()
    assert observed == ["cancelled-inside"]
    assert store.get(queued.id).started_at is None  # never ran


def test_graceful_stop_requeues_running_job_without_using_an_attempt(tmp_path: Path) -> None:
    started = threading.Event()

    def work(job, ctx):
        started.set()
        while True:
            ctx.progress("loop", 0, 1)
            time.sleep(0.01)

    store = JobStore(tmp_path / "db.sqlite3")
    runner = JobRunner(store, work, scratch_dir=tmp_path / "tmp", workers=1)
    runner.start()
    job = runner.submit("lipsync", {})
    assert started.wait(5)
    runner.stop(timeout=5)
    rec = store.get(job.id)
    assert (rec.status, rec.attempts) == ("queued", 0)
    # Its scratch stays for the rerun (it may hold uploaded inputs); nothing else is left.
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [job.id]


# --- SSRF guard ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed_public", "allowed_private"),
    [
        ("8.8.8.8", True, True),
        ("127.0.0.1", False, True),
        ("10.1.2.3", False, True),
        ("192.168.0.10", False, True),
        ("172.16.5.5", False, True),
        ("169.254.1.1", False, True),
        ("100.64.0.1", False, True),  # carrier-grade NAT: not global
        ("169.254.169.254", False, False),  # metadata: refused even when private is allowed
        ("fd00:ec2::254", False, False),
        ("100.100.100.200", False, False),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),  # IPv4-mapped loopback
        ("::ffff:169.254.169.254", False, False),
        ("fe80::1", False, True),
        ("2606:4700:4700::1111", True, True),
        ("0.0.0.0", False, False),
        # IPv6 forms that embed an IPv4 address are judged by it (issue 13, defect 9)
        ("64:ff9b::169.254.169.254", False, False),  # NAT64 well-known prefix
        ("64:ff9b::8.8.8.8", True, True),  # what DNS64 hands an IPv6-only host for a public site
        ("64:ff9b::10.0.0.5", False, True),
        ("64:ff9b:1::a9fe:a9fe", False, False),  # local-use NAT64, /96 layout
        ("64:ff9b:1:a9fe:a9:fe00::", False, False),  # local-use NAT64, /48 layout
        ("::169.254.169.254", False, False),  # IPv4-compatible
        ("::ffff:0:169.254.169.254", False, False),  # SIIT IPv4-translated
        ("2002:a9fe:a9fe::1", False, False),  # 6to4
        ("2002:808:808::1", True, True),
        ("2001:0:4136:e378:8000:63bf:5601:5601", False, False),  # Teredo, client 169.254.169.254
    ],
)
def test_address_policy(address: str, allowed_public: bool, allowed_private: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert (address_problem(ip, allow_private=False) is None) is allowed_public
    assert (address_problem(ip, allow_private=True) is None) is allowed_private


def test_metadata_refusal_never_suggests_allow_private() -> None:
    for allow in (False, True):
        for host in ("169.254.169.254", "[64:ff9b::a9fe:a9fe]", "[::ffff:0:169.254.169.254]", "metadata.google.internal"):
            with pytest.raises(UnsafeURL) as exc:
                check_url(f"http://{host}/latest/", allow_private=allow, field="video_url")
            assert "ALLOW_PRIVATE" not in exc.value.message and "metadata" in exc.value.message
    with pytest.raises(UnsafeURL, match="LIPSYNC_ALLOW_PRIVATE_URLS"):  # a private address does suggest it
        check_url("http://10.0.0.5/v.mp4", allow_private=False, field="video_url")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.mp4", "file:///etc/passwd", "gopher://x", "javascript:alert(1)", "http://", "//x/y"]
)
def test_only_http_schemes(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url_syntax(url, field="video_url")


def test_check_url_resolves_names() -> None:
    with pytest.raises(UnsafeURL, match="loopback"):
        check_url("http://localhost:8000/x.mp4", allow_private=False, field="video_url")
    with pytest.raises(UnsafeURL, match="metadata"):
        check_url("http://metadata.google.internal/computeMetadata/v1/", allow_private=True, field="video_url")
    with pytest.raises(UnsafeURL, match="loopback"):  # 127.0.0.1 spelled as one decimal number
        check_url("http://2130706433/x.mp4", allow_private=False, field="video_url")
    check_url("http://localhost:8000/x.mp4", allow_private=True, field="video_url")


def test_redact_drops_query_and_credentials() -> None:
    assert redact("https://user:pw@s3.example.com:9000/b/k.mp4?X-Amz-Signature=abc") == \
        "https://s3.example.com:9000/b/k.mp4"


# --- sniffing and downloads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "webm"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00", "mp3"),
        (b"\xff\xf1\x50\x80\x00", "aac"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "png"),
        (b"  <!DOCTYPE html><html>", "html"),
        (b"\xef\xbb\xbf<?xml version='1.0'?>", "html"),
        (b'{"error": "nope"}', "text"),
        (b"\x00\x01\x02\x03\x04\x05\x06\x07", None),
    ],
)
def test_sniff(head: bytes, kind: str | None) -> None:
    assert sniff(head) == kind


def _fetcher(**kw) -> Fetcher:
    limits = FetchLimits(**{"read_timeout_s": 1.0, "connect_timeout_s": 2.0, "backoff_s": 0.01, **kw})
    return Fetcher(limits, allow_private=True)


def test_download_errors_and_retries(tmp_path: Path) -> None:
    mp4 = b"\x00\x00\x00\x20ftypisom" + b"\x00" * 2000
    with AssetServer() as srv:
        ok = srv.add("flaky.mp4", mp4, content_type="video/mp4", fail_first=2)
        path = _fetcher().download(ok, tmp_path / "v", kind="video", field="video_url")
        assert path.suffix == ".mp4" and path.read_bytes() == mp4 and srv.assets["/flaky.mp4"].hits == 3

        redirected = srv.add("r", redirect_to=srv.url("flaky.mp4"))
        assert _fetcher().download(redirected, tmp_path / "r", kind="video", field="video_url").exists()

        with pytest.raises(MediaNotFound) as e404:
            _fetcher().download(srv.url("missing.mp4"), tmp_path / "m", kind="video", field="video_url")
        assert e404.value.field == "video_url"

        html = srv.add("page", b"<html><body>login</body></html>" * 40, content_type="text/html")
        with pytest.raises(NotAMediaFile, match="HTML page"):
            _fetcher().download(html, tmp_path / "h", kind="video", field="video_url")

        jpg = srv.add("pic.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 600, content_type="image/jpeg")
        with pytest.raises(NotAMediaFile, match="audio"):
            _fetcher().download(jpg, tmp_path / "a", kind="audio", field="audio_url")

        big = srv.add("big.mp4", mp4 * 10, content_type="video/mp4")
        with pytest.raises(DownloadTooLarge) as e413:
            _fetcher(max_bytes=5000).download(big, tmp_path / "b", kind="video", field="video_url")
        assert e413.value.http_status == 413
        lying = srv.add("lying.mp4", mp4 * 10, content_type="video/mp4", declared_length=-1)  # no Content-Length
        with pytest.raises(DownloadTooLarge):
            _fetcher(max_bytes=5000).download(lying, tmp_path / "l", kind="video", field="video_url")

        stall = srv.add("stall.mp4", mp4, content_type="video/mp4", stall=True)
        t0 = time.monotonic()
        with pytest.raises(FetchTimeout):
            _fetcher().download(stall, tmp_path / "s", kind="video", field="video_url")
        assert time.monotonic() - t0 < 5

        broken = srv.add("down.mp4", mp4, content_type="video/mp4", fail_first=99)
        with pytest.raises(FetchError, match="503"):
            _fetcher().download(broken, tmp_path / "d", kind="video", field="video_url")

        to_metadata = srv.add("evil", redirect_to="http://169.254.169.254/latest/meta-data/")
        with pytest.raises(UnsafeURL, match="metadata"):
            _fetcher().download(to_metadata, tmp_path / "e", kind="video", field="video_url")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.mp4", "v.mp4"]  # nothing partial left


def test_guard_applies_at_connect_time(tmp_path: Path) -> None:
    """With private URLs refused, even a URL that skipped the early check cannot connect to loopback."""
    with AssetServer() as srv:
        url = srv.add("v.mp4", b"\x00\x00\x00\x20ftypisom" + b"\x00" * 600)
        fetcher = Fetcher(FetchLimits(attempts=1), allow_private=False)
        with fetcher.client() as client, pytest.raises(httpx.ConnectError, match="loopback"):
            client.get(url)


def test_upload_reports_expired_url(tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    out.write_bytes(b"\x00" * 3000)
    with AssetServer() as srv:
        srv.put_status["/expired"] = 403
        srv.put_status["/flaky"] = 500
        uploader = Uploader(FetchLimits(backoff_s=0.01), allow_private=True)
        with pytest.raises(UploadRejected, match="Request has expired") as exc:
            uploader.upload(out, srv.url("expired?X-Amz-Signature=secret"))
        assert exc.value.http_status == 400 and "secret" not in exc.value.message
        assert uploader.upload(out, srv.url("ok")) == 200
        put = next(r for r in srv.received if r.method == "PUT" and r.path == "/ok")
        assert put.headers["Content-Type"] == "video/mp4" and put.headers["Content-Length"] == "3000"
        assert "Transfer-Encoding" not in put.headers and len(put.body) == 3000


# --- webhooks -----------------------------------------------------------------------------------------


def test_signature_roundtrip() -> None:
    body = json.dumps({"job_id": "x"}).encode()
    header = sign(body, "k")
    assert header.startswith("sha256=") and verify(body, "k", header)
    assert not verify(body + b" ", "k", header) and not verify(body, "other", header) and not verify(body, "k", None)


# --- schemas ------------------------------------------------------------------------------------------


def test_brief_defaults() -> None:
    req = LipSyncIn(video_url="https://e.com/v.mp4", audio_url="https://e.com/a.mp3",
                    characters=[{"id": "speaker", "name": "Main", "reference_image_url": "https://e.com/f.jpg"}])
    # enhance: the brief's enhance_quality=true became "auto" (on under CUDA, off on a CPU), issue #9.
    assert (req.similarity_threshold, req.enhance, req.loop_mode, req.crossfade_frames,
            req.temporal_smoothing, req.pads, req.async_) == (0.5, "auto", "crossfade", 10, 0.3, [0, 20, 0, 0], False)
    assert LipSyncIn.model_validate({"video_url": "http://a/v", "audio_url": "http://a/a", "async": True}).async_


def test_engine_spreads_jobs_over_devices_least_busy_first():
    from lipsync.jobs.engine import PipelineEngine, engine_devices

    assert engine_devices(Settings(device="cpu")) == ["cpu"]
    engine = PipelineEngine(Settings(device="cpu"), devices=["cpu", "cpu"])
    assert len(engine.pipelines) == 2 and engine.pipelines[1].store is engine.pipelines[0].store
    with engine.acquire() as first, engine.acquire() as second:
        assert first is not second
        with engine.acquire() as third:  # both busy once: back to the first
            assert third is first
    with engine.acquire() as again:
        assert again is engine.pipelines[0]


def test_pipelines_share_one_face_backend():
    from lipsync.pipeline import LipSyncPipeline

    backend = object()
    other = LipSyncPipeline(Settings(device="cpu"), device="cpu")
    other.share_face_backend(backend)
    assert other.get_face_backend() is backend and other.face_backend_loaded



def test_a_held_result_file_is_served_whole_after_retention_deletes_its_name(tmp_path):
    import os

    from lipsync.api.result_file import held_file

    path = tmp_path / "job.mp4"
    data = os.urandom(300_000)
    path.write_bytes(data)
    served, stat, close = held_file(path)
    path.unlink()  # the retention sweep, between the response's headers and its body
    try:
        assert stat.st_size == len(data)
        with open(served, "rb") as again:  # how the response (and each Range request) reads it
            assert again.read() == data
    finally:
        close()
    assert held_file(tmp_path / "gone.mp4") is None  # already gone: the route answers 404
