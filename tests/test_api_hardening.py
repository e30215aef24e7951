"""Issue 13 (server side) against real servers on loopback, run through the same uvicorn configuration as
``lipsync serve``: bodies bounded on the stream before auth (with the server's RSS measured), transfers
that hold their deadline and DELETE whatever the peer's pace, webhooks for every final state (crash
recovery included), retention, and slow or idle connections."""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from api_fixtures import ApiServer, AssetServer, Media, make_media

pytestmark = pytest.mark.slow

API_KEY = "hardening-key-0123456789"
TOTAL_TIMEOUT_S = 3.0  # downloads and uploads
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def assets(media: Media):
    with AssetServer() as srv:
        srv.add_file("v.mp4", media.video, "video/mp4")
        srv.add_file("a.wav", media.audio, "audio/wav")
        srv.add("trickle.mp4", media.video.read_bytes(), content_type="video/mp4", trickle_s=0.5)
        srv.put_trickle["/slow-target"] = 0.5
        srv.put_endless.add("/endless-target")
        yield srv


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"LIPSYNC_ALLOW_PRIVATE_URLS": "true", "LIPSYNC_WORKERS": "1", "TMPDIR": str(tmp), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    env = _env(base / "systmp",
               LIPSYNC_DOWNLOAD_TOTAL_TIMEOUT_S=str(TOTAL_TIMEOUT_S), LIPSYNC_DOWNLOAD_READ_TIMEOUT_S="2",
               LIPSYNC_UPLOAD_TOTAL_TIMEOUT_S=str(TOTAL_TIMEOUT_S),
               LIPSYNC_HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), LIPSYNC_HTTP_KEEP_ALIVE_S="1",
               LIPSYNC_HTTP_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S), LIPSYNC_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    with ApiServer(env=env, work_dir=base / "work", api_key=API_KEY) as srv:
        yield srv


def _body(assets: AssetServer, **over: Any) -> dict[str, Any]:
    return {"video_url": assets.url("v.mp4"), "audio_url": assets.url("a.wav"), "enhance_quality": False,
            "async": True, **over}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- defect 1: the body limit holds on the stream, and auth comes first ----------------------------------


def _stream_chunked(port: int, path: str, headers: dict[str, str], total: int) -> dict[str, Any]:
    """POST ``total`` bytes as fast as loopback takes them, chunked (no Content-Length), reading the answer
    while sending. Returns the status, the error code, how much was sent before the answer arrived, and
    how long that took."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sock.setblocking(False)
    piece = b"a" * (1 << 20)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    opening = b'{"video_url": "aa'
    pending = f"{len(opening):x}\r\n".encode() + opening + b"\r\n"
    sent = sent_at_answer = 0
    answer = b""
    started = time.monotonic()
    answered_s = None
    try:
        while time.monotonic() - started < 60:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1.0)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                if not answer:
                    answered_s, sent_at_answer = time.monotonic() - started, sent
                answer += data
                if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1].rstrip().endswith(b"}"):
                    break
            if writable:
                if not pending:
                    pending = frame
                n = sock.send(pending)
                sent += n
                pending = pending[n:]
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    assert answer, f"no answer after sending {sent} bytes"
    status = int(answer.split(b" ", 2)[1])
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return {"status": status, "code": body["error"]["code"], "sent_before_answer": sent_at_answer,
            "answered_s": answered_s, "sent": sent}


@pytest.mark.parametrize(("name", "path", "headers", "status", "code"), [
    ("no key", "/lipsync", {}, 401, "unauthorized"),
    ("wrong key", "/jobs", {"Authorization": "Bearer nope"}, 401, "unauthorized"),
    ("no key, upload route", "/lipsync/upload", {}, 401, "unauthorized"),
    ("with key, over the JSON limit", "/lipsync", {"Authorization": f"Bearer {API_KEY}"}, 413, "request_too_large"),
])
def test_big_chunked_bodies_are_refused_early_without_memory(server: ApiServer, name: str, path: str,
                                                            headers: dict[str, str], status: int, code: str) -> None:
    """Four 200 MiB chunked bodies in parallel: each is answered before a few MiB went in, and the server's
    resident memory barely moves (it used to buffer and parse the whole body before checking the key)."""
    assert server.proc is not None
    with server.client() as c:
        assert c.get("/health").status_code == 200  # warm: lazy imports done before the baseline
    before = _rss_bytes(server.proc.pid)
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: results.append(
        _stream_chunked(server.port, path, headers, 200 << 20))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    growth = _rss_bytes(server.proc.pid) - before
    assert len(results) == 4
    for r in results:
        assert (r["status"], r["code"]) == (status, code), r
        assert r["sent_before_answer"] < 32 << 20, r  # answered within the first few MiB (socket buffers)
        assert r["sent"] < 64 << 20, r  # and the server stopped reading instead of draining 200 MiB
    assert growth < 40 << 20, f"server RSS grew by {growth / 2**20:.1f} MiB"


def test_declared_length_over_the_limit_is_refused_unread(server: ApiServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {500 << 20}\r\n\r\n".encode())
    answer = b""
    while chunk := sock.recv(65536):  # the server answers and hangs up without reading the body
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer, answer


# --- defect 2: a trickling peer beats neither the total deadline nor DELETE ------------------------------


def _wait(server: ApiServer, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            time.sleep(0.05)
    raise AssertionError(f"{job_id} not {statuses} after {timeout}s: {job}\n{server.log()}")


def test_trickling_download_fails_at_the_total_deadline(server: ApiServer, assets: AssetServer) -> None:
    with server.client() as c:
        job_id = c.post("/jobs", json=_body(assets, video_url=assets.url("trickle.mp4"))).json()["job_id"]
    _wait(server, job_id, ("running",), 10)
    started = time.monotonic()
    job = _wait(server, job_id, ("failed", "succeeded", "cancelled"), 20)
    took = time.monotonic() - started
    assert job["status"] == "failed" and job["error"]["code"] == "fetch_timeout", job
    assert job["error"]["field"] == "video_url" and "took longer than 3 s" in job["error"]["message"], job
    assert took < TOTAL_TIMEOUT_S + 1.5, f"failed after {took:.1f}s, total timeout {TOTAL_TIMEOUT_S}s"


def test_delete_frees_the_worker_from_a_trickling_download(server: ApiServer, assets: AssetServer) -> None:
    with server.client() as c:
        slow = c.post("/jobs", json=_body(assets, video_url=assets.url("trickle.mp4"))).json()["job_id"]
        _wait(server, slow, ("running",), 10)
        nxt = c.post("/jobs", json=_body(assets)).json()["job_id"]  # waits: one worker
        time.sleep(0.3)
        assert c.get(f"/jobs/{nxt}").json()["status"] == "queued"
        deleted = time.monotonic()
        assert c.delete(f"/jobs/{slow}").json()["status"] == "cancelled"
    _wait(server, nxt, ("running", "succeeded"), 10)
    freed = time.monotonic() - deleted
    assert freed < 1.5, f"the next job started {freed:.2f}s after DELETE"
    assert _wait(server, nxt, ("succeeded", "failed"), 20)["status"] == "succeeded"


def test_trickling_upload_target_fails_at_the_upload_deadline(server: ApiServer, assets: AssetServer) -> None:
    with server.client() as c:
        job_id = c.post("/jobs", json=_body(assets, upload_url=assets.url("slow-target?X-Amz-Signature=s"))
                        ).json()["job_id"]
    job = _wait(server, job_id, ("failed", "succeeded", "cancelled"), 30)
    assert job["status"] == "failed" and job["error"]["code"] == "upload_timeout", job
    assert job["error"]["field"] == "upload_url" and "X-Amz-Signature" not in job["error"]["message"]


def test_endless_answer_of_an_upload_target_is_not_buffered(server: ApiServer, assets: AssetServer) -> None:
    assert server.proc is not None
    before = _rss_bytes(server.proc.pid)
    with server.client() as c:
        job_id = c.post("/jobs", json=_body(assets, upload_url=assets.url("endless-target"))).json()["job_id"]
    job = _wait(server, job_id, ("failed", "succeeded", "cancelled"), 30)
    assert job["status"] == "failed" and job["error"]["code"] == "upload_rejected", job
    assert _rss_bytes(server.proc.pid) - before < 40 << 20


# --- request bodies and connections that arrive slowly ---------------------------------------------------


@pytest.mark.parametrize(("path", "content_type", "opening", "limit_s"), [
    ("/jobs", "application/json", b"", BODY_TIMEOUT_S),
    ("/lipsync/upload", "multipart/form-data; boundary=b0undary",
     b'--b0undary\r\nContent-Disposition: form-data; name="options"\r\n\r\n', TOTAL_TIMEOUT_S),
])
def test_trickled_body_gets_408(server: ApiServer, path: str, content_type: str, opening: bytes,
                                limit_s: float) -> None:
    """One byte every 0.3 s never stalls long enough for the idle timeout; the total limit stops it."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                 f"Content-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n".encode() + opening)
    started = time.monotonic()
    answer = b""
    sock.setblocking(False)
    while time.monotonic() - started < 10 and b"\r\n\r\n" not in answer:
        try:
            sock.send(b" ")
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], 0.3)
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    took = time.monotonic() - started
    # The headers may arrive in a packet of their own: read the body they announce.
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), b"0"))
    sock.setblocking(True)
    sock.settimeout(2)
    while len(body) < length:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    answer = head + b"\r\n\r\n" + body
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
    assert limit_s - 0.5 < took < limit_s + 1.0, took


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """True when the server closes ``sock`` within ``seconds`` while we send ``trickle`` a byte at a time."""
    end = time.monotonic() + seconds
    sock.setblocking(False)
    i = 0
    while time.monotonic() < end:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return True
            except ConnectionResetError:
                return True
        if i < len(trickle):
            try:
                sock.send(trickle[i : i + 1])
            except OSError:
                return True
            i += 1
    return False


def test_slow_header_senders_and_idle_connections_are_closed(server: ApiServer) -> None:
    slow_header = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: {'a' * 200}\r\n\r\n".encode()
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        # While they hold the connection slots, a new request is turned away instead of queueing.
        with server.client(timeout=5) as c:
            assert c.get("/health").status_code == 503
        results: list[bool] = []
        threads = [threading.Thread(target=lambda s=s: results.append(_closed_within(s, 4.0, slow_header)))
                   for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results.count(True) == len(socks), f"{results.count(False)} slow connections still open"
    finally:
        for s in socks:
            s.close()
    # Slots free again; and a kept-alive connection that goes quiet is closed after the keep-alive time.
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    assert _closed_within(kept, 3.0)
    kept.close()


# --- defect 13: a webhook for every final state, crash recovery included ---------------------------------


def _posts(assets: AssetServer, path: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if assets.posts(path):
            return assets.posts(path)
        time.sleep(0.05)
    return []


def test_webhook_after_crash_recovery_and_for_owed_deliveries(tmp_path: Path, assets: AssetServer) -> None:
    env = _env(tmp_path / "systmp", LIPSYNC_TEST_FAKE_SECONDS="4")
    work = tmp_path / "work"
    srv = ApiServer(env=env, work_dir=work, api_key=API_KEY).start()
    with srv.client() as c:
        job_id = c.post("/jobs", json=_body(assets, webhook_url=assets.url("hook/crash"))).json()["job_id"]
    # Killed mid-run twice: the first restart retries it, the second marks it failed (interrupted).
    for _ in range(2):
        _wait(srv, job_id, ("running",), 15)
        srv.kill()
        srv = ApiServer(env=env, work_dir=work, api_key=API_KEY).start()
    try:
        job = _wait(srv, job_id, ("failed",), 10)
        assert job["error"]["code"] == "interrupted", job
        (hook,) = _posts(assets, "hook/crash")
        payload = json.loads(hook.body)
        assert payload["job_id"] == job_id and payload["status"] == "failed"
        assert payload["error"]["code"] == "interrupted"
    finally:
        srv.kill()
    # A crash between a job's end and its webhook: the row says it is still owed; the restart sends it.
    with sqlite3.connect(work / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET webhook_status='pending', webhook_url=? WHERE id=?",
                   (assets.url("hook/owed"), job_id))
    with ApiServer(env=env, work_dir=work, api_key=API_KEY):
        (hook,) = _posts(assets, "hook/owed")
        assert json.loads(hook.body)["job_id"] == job_id


# --- retention -------------------------------------------------------------------------------------------


def test_retention_deletes_results_then_rows(tmp_path: Path, assets: AssetServer) -> None:
    env = _env(tmp_path / "systmp", LIPSYNC_RESULT_RETENTION_S="4", LIPSYNC_JOB_RETENTION_S="7",
               LIPSYNC_RETENTION_SWEEP_S="0.2")
    with ApiServer(env=env, work_dir=tmp_path / "work", api_key=API_KEY) as srv, srv.client() as c:
        job_id = c.post("/jobs", json=_body(assets)).json()["job_id"]
        assert _wait(srv, job_id, ("succeeded",), 20)
        assert c.get(f"/jobs/{job_id}/result").status_code == 200
        deadline = time.monotonic() + 15
        while c.get(f"/jobs/{job_id}/result").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        gone = c.get(f"/jobs/{job_id}/result")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "result_not_stored", gone.text
        assert c.get(f"/jobs/{job_id}").status_code == 200  # the row outlives the result
        while c.get(f"/jobs/{job_id}").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        row = c.get(f"/jobs/{job_id}")
        assert row.status_code == 404 and row.json()["error"]["code"] == "job_not_found", row.text
        assert not list((tmp_path / "work" / "results").glob("*.mp4"))
