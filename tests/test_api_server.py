"""The API against real uvicorn processes on loopback, with the fast fake engine (tests/api_fixtures.py):
the bad-input corpus, async jobs with signed webhooks, cancellation, the bounded queue, 503 while models
are not ready, restart recovery, and a 50-job load run. The real pipeline runs in test_api_full.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from api_fixtures import ApiServer, AssetServer, Media, make_media, scratch_leftovers

pytestmark = pytest.mark.slow

API_KEY = "test-key-0123456789"
SECRET = "webhook-secret"
MAX_DOWNLOAD = 1_000_000


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def assets(media: Media):
    with AssetServer() as srv:
        srv.add_file("v.mp4", media.video, "video/mp4")
        srv.add_file("a.wav", media.audio, "audio/wav")
        srv.add_file("r.jpg", media.reference, "image/jpeg")
        srv.add_file("truncated.mp4", media.truncated, "video/mp4")
        srv.add("page.html", b"<!DOCTYPE html><html><body>Sign in to continue</body></html>" * 20,
                content_type="text/html")
        srv.add("big.mp4", media.video.read_bytes() * (MAX_DOWNLOAD // media.video.stat().st_size + 2),
                content_type="video/mp4")
        srv.add("stall.mp4", media.video.read_bytes(), content_type="video/mp4", stall=True)
        srv.add("to-metadata.mp4", redirect_to="http://169.254.169.254/latest/meta-data/")
        srv.put_status["/expired-upload"] = 403
        yield srv


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "LIPSYNC_WEBHOOK_SECRET": SECRET,
        "LIPSYNC_MAX_DOWNLOAD_BYTES": str(MAX_DOWNLOAD),
        "LIPSYNC_DOWNLOAD_READ_TIMEOUT_S": "1",
        "LIPSYNC_DOWNLOAD_CONNECT_TIMEOUT_S": "2",
        "TMPDIR": str(tmp),  # so the test can see any temp file the server leaves behind
        **extra,
    }


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """Private URLs allowed (assets are on loopback), two workers."""
    base = tmp_path_factory.mktemp("open")
    env = _env(base / "systmp", LIPSYNC_ALLOW_PRIVATE_URLS="true", LIPSYNC_WORKERS="2")
    with ApiServer(env=env, work_dir=base / "work", api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """Private URLs refused (the default)."""
    base = tmp_path_factory.mktemp("strict")
    with ApiServer(env=_env(base / "systmp"), work_dir=base / "work", api_key=API_KEY) as srv:
        yield srv


def _body(assets: AssetServer, **over: Any) -> dict[str, Any]:
    body = {
        "video_url": assets.url("v.mp4"),
        "audio_url": assets.url("a.wav"),
        "characters": [{"id": "speaker", "name": "Main Speaker", "reference_image_url": assets.url("r.jpg")}],
        "enhance_quality": False,
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def _assert_error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert set(data) == {"error"}, data
    err = data["error"]
    assert set(err) <= {"code", "message", "field"} and err["message"], err
    assert err["code"] == code, err
    if field is not None:
        assert err.get("field") == field, err
    assert "Traceback" not in resp.text and "/work/" not in err["message"], err
    return err


# --- the bad-input corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str
    field: str | None = None
    server: str = "open"  # which server: open (private allowed) or strict
    method: str = "POST"
    path: str = "/lipsync"
    body: Any = None  # a function of the asset server -> JSON body; or raw bytes
    headers: dict[str, str] = dc_field(default_factory=dict)
    message_lacks: str | None = None  # a text the error message must not contain


def _drop(key: str):
    def make(a: AssetServer) -> dict:
        body = _body(a)
        body.pop(key)
        return body

    return make


CORPUS = [
    Case("missing video_url", 422, "validation_error", "video_url", body=_drop("video_url")),
    Case("missing audio_url", 422, "validation_error", "audio_url", body=_drop("audio_url")),
    Case("similarity_threshold above 1", 422, "validation_error", "similarity_threshold",
         body=lambda a: _body(a, similarity_threshold=1.5)),
    Case("temporal_smoothing negative", 422, "validation_error", "temporal_smoothing",
         body=lambda a: _body(a, temporal_smoothing=-0.1)),
    Case("temporal_smoothing over 1", 422, "validation_error", "temporal_smoothing",
         body=lambda a: _body(a, temporal_smoothing=1.5)),
    Case("crossfade_frames huge", 422, "validation_error", "crossfade_frames",
         body=lambda a: _body(a, crossfade_frames=100000)),
    Case("pads of length 3", 422, "validation_error", "pads", body=lambda a: _body(a, pads=[0, 20, 0])),
    Case("negative pad", 422, "validation_error", "pads", body=lambda a: _body(a, pads=[-5, 20, 0, 0])),
    Case("batch size 0", 422, "validation_error", "wav2lip_batch_size",
         body=lambda a: _body(a, wav2lip_batch_size=0)),
    Case("bad loop_mode", 422, "validation_error", "loop_mode", body=lambda a: _body(a, loop_mode="bounce")),
    Case("threshold is a string", 422, "validation_error", "similarity_threshold",
         body=lambda a: _body(a, similarity_threshold="high")),
    Case("unknown field (typo)", 422, "validation_error", "enhance", body=lambda a: _body(a, enhance=True)),
    Case("duplicate character ids", 422, "validation_error", "characters",
         body=lambda a: _body(a, characters=[{"id": "x", "reference_image_url": a.url("r.jpg")}] * 2)),
    Case("character without reference image", 422, "validation_error", "characters[0].reference_image_url",
         body=lambda a: _body(a, characters=[{"id": "x"}])),
    Case("ftp scheme", 422, "validation_error", "video_url", body=lambda a: _body(a, video_url="ftp://example.com/v.mp4")),
    Case("file scheme in reference", 422, "validation_error", "characters[0].reference_image_url",
         body=lambda a: _body(a, characters=[{"id": "x", "reference_image_url": "file:///etc/passwd"}])),
    Case("request body too large", 413, "request_too_large",
         body=b'{"video_url": "' + b"a" * 300_000 + b'"}', headers={"Content-Type": "application/json"}),
    Case("body is not JSON", 400, "invalid_json", body=b"{not json", headers={"Content-Type": "application/json"}),
    Case("body is not UTF-8", 400, "invalid_json", body=b'{"video_url": "\xff\xfe"}',
         headers={"Content-Type": "application/json"}),
    Case("arrays nested 30000 deep", 400, "invalid_json", body=b"[" * 30000 + b"]" * 30000,
         headers={"Content-Type": "application/json"}),
    Case("objects nested 10000 deep", 400, "invalid_json", body=b'{"a":' * 10000 + b"1" + b"}" * 10000),
    Case("nesting in an unknown field", 400, "invalid_json",
         body=b'{"video_url": "http://x/v.mp4", "extra": ' + b"[" * 100 + b"]" * 100 + b"}"),
    Case("NaN is not JSON", 400, "invalid_json", body=b'{"similarity_threshold": NaN}',
         headers={"Content-Type": "application/json"}),
    Case("unpaired surrogate", 400, "invalid_json", body=b'{"video_url": "\\ud800"}',
         headers={"Content-Type": "application/json"}),
    Case("integer of 5000 digits", 400, "invalid_json", body=b'{"crossfade_frames": ' + b"9" * 5000 + b"}",
         headers={"Content-Type": "application/json"}),
    Case("JSON sent as text/plain", 415, "unsupported_media_type", body=b'{"video_url": "http://x/v.mp4"}',
         headers={"Content-Type": "text/plain"}),
    Case("chunked body over the limit", 413, "request_too_large",
         body=lambda a: iter([b'{"video_url": "'] + [b"a" * 65536] * 8 + [b'"}']),
         headers={"Content-Type": "application/json"}),
    Case("no API key, with a body", 401, "unauthorized", body=lambda a: _body(a), headers={"Authorization": ""}),
    Case("character id with a trailing newline", 422, "validation_error", "characters[0].id",
         body=lambda a: _body(a, characters=[{"id": "speaker\n", "reference_image_url": a.url("r.jpg")}])),
    Case("loopback URL", 422, "unsafe_url", "video_url", server="strict",
         body=lambda a: _body(a, video_url=a.url("v.mp4"))),
    Case("localhost by name", 422, "unsafe_url", "audio_url", server="strict",
         body=lambda a: _body(a, video_url="http://93.184.215.14/v.mp4",
                              audio_url=f"http://localhost:{a.port}/a.wav")),
    Case("metadata IPv4", 422, "unsafe_url", "video_url", server="strict",
         body=lambda a: _body(a, video_url="http://169.254.169.254/latest/meta-data/")),
    Case("metadata IPv6", 422, "unsafe_url", "video_url", server="strict",
         body=lambda a: _body(a, video_url="http://[fd00:ec2::254]/latest/meta-data/")),
    Case("private 10/8 upload_url", 422, "unsafe_url", "upload_url", server="strict",
         body=lambda a: _body(a, video_url="http://93.184.215.14/v.mp4", audio_url="http://93.184.215.14/a.wav",
                              characters=[], upload_url="http://10.0.0.5/bucket/out.mp4")),
    Case("metadata even when private allowed", 422, "unsafe_url", "video_url",
         body=lambda a: _body(a, video_url="http://169.254.169.254/latest/meta-data/"),
         message_lacks="ALLOW_PRIVATE"),
    Case("metadata refusal does not suggest allow-private", 422, "unsafe_url", "video_url", server="strict",
         body=lambda a: _body(a, video_url="http://169.254.169.254/latest/meta-data/"),
         message_lacks="ALLOW_PRIVATE"),
    *[Case(f"metadata as {form} with private allowed", 422, "unsafe_url", "video_url",
           body=lambda a, host=host: _body(a, video_url=f"http://[{host}]/latest/meta-data/"),
           message_lacks="ALLOW_PRIVATE")
      for form, host in [("NAT64 64:ff9b::/96", "64:ff9b::a9fe:a9fe"), ("NAT64 dotted", "64:ff9b::169.254.169.254"),
                         ("local-use NAT64", "64:ff9b:1::a9fe:a9fe"), ("IPv4-compatible", "::169.254.169.254"),
                         ("IPv4-mapped", "::ffff:169.254.169.254"), ("SIIT", "::ffff:0:169.254.169.254"),
                         ("6to4", "2002:a9fe:a9fe::1")]],
    Case("private 10/8 via NAT64", 422, "unsafe_url", "video_url", server="strict",
         body=lambda a: _body(a, video_url="http://[64:ff9b::10.0.0.5]/v.mp4")),
    Case("redirect to metadata", 422, "unsafe_url", "video_url",
         body=lambda a: _body(a, video_url=a.url("to-metadata.mp4"))),
    Case("404 asset", 400, "media_not_found", "video_url", body=lambda a: _body(a, video_url=a.url("gone.mp4"))),
    Case("HTML page as video", 422, "not_media", "video_url", body=lambda a: _body(a, video_url=a.url("page.html"))),
    Case("image as audio", 422, "not_media", "audio_url", body=lambda a: _body(a, audio_url=a.url("r.jpg"))),
    Case("truncated MP4", 422, "corrupt_media", "video_url",
         body=lambda a: _body(a, video_url=a.url("truncated.mp4"))),
    Case("oversized download", 413, "download_too_large", "video_url",
         body=lambda a: _body(a, video_url=a.url("big.mp4"))),
    Case("stalled server", 400, "fetch_timeout", "video_url", body=lambda a: _body(a, video_url=a.url("stall.mp4"))),
    Case("expired upload URL", 400, "upload_rejected", "upload_url",
         body=lambda a: _body(a, upload_url=a.url("expired-upload?X-Amz-Expires=1&X-Amz-Signature=abc"))),
    Case("wrong API key", 401, "unauthorized", body=lambda a: _body(a), headers={"Authorization": "Bearer nope"}),
    Case("no API key", 401, "unauthorized", method="GET", path="/", headers={"Authorization": ""}),
    Case("unknown job", 404, "job_not_found", method="GET", path="/jobs/0123456789abcdef"),
    Case("cancel unknown job", 404, "job_not_found", method="DELETE", path="/jobs/0123456789abcdef"),
    Case("result of unknown job", 404, "job_not_found", method="GET", path="/jobs/0123456789abcdef/result"),
    Case("unknown route", 404, "not_found", method="GET", path="/nope"),
    Case("wrong method", 405, "method_not_allowed", method="PUT", path="/lipsync", body=lambda a: {}),
    Case("face-tracking bad threshold", 422, "validation_error", "similarity_threshold", path="/face-tracking",
         body=lambda a: {"video_url": a.url("v.mp4"), "similarity_threshold": -1}),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_corpus(case: Case, assets: AssetServer, open_server: ApiServer, strict_server: ApiServer) -> None:
    server = open_server if case.server == "open" else strict_server
    kwargs: dict[str, Any] = {}
    if isinstance(case.body, bytes):
        kwargs["content"] = case.body
    elif case.body is not None:
        body = case.body(assets)
        kwargs["json" if isinstance(body, dict) else "content"] = body
    with server.client() as client:
        headers = httpx.Headers(client.headers)
        for key, value in case.headers.items():
            if value:
                headers[key] = value
            elif key in headers:
                del headers[key]
        client.headers = headers
        resp = client.request(case.method, case.path, **kwargs)
    err = _assert_error(resp, case.status, case.code, case.field)
    if case.message_lacks:
        assert case.message_lacks not in err["message"], err


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 20


# --- happy paths on the fake engine ---------------------------------------------------------------------


def _verify_signature(body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


def test_info_health_docs(open_server: ApiServer) -> None:
    health = httpx.get(open_server.url + "/health", trust_env=False).json()  # no key needed
    for key in ("status", "insightface_loaded", "wav2lip_loaded", "gfpgan_loaded", "gpu_available", "gpu_name",
                "gpu_memory_gb", "queue_depth", "running_jobs"):
        assert key in health
    assert health["status"] == "healthy"
    with open_server.client() as c:
        info = c.get("/").json()
        assert info["name"] == "lipsync" and "POST /lipsync" in info["endpoints"]
        schema = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    for path, method in [("/lipsync", "post"), ("/face-tracking", "post"), ("/jobs", "post")]:
        op = schema["paths"][path][method]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        assert schema["components"]["schemas"][ref].get("examples"), path
    props = schema["components"]["schemas"]["LipSyncIn"]["properties"]
    assert props["loop_mode"]["default"] == "crossfade" and props["pads"]["default"] == [0, 20, 0, 0]
    assert "async" in props and props["similarity_threshold"]["default"] == 0.5


def test_async_flow_with_signed_webhook(open_server: ApiServer, assets: AssetServer) -> None:
    with open_server.client() as c:
        resp = c.post("/lipsync", json=_body(assets, **{"async": True, "webhook_url": assets.url("hook/async")}))
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        assert resp.headers["location"] == f"/jobs/{job_id}"
        job = open_server.wait_final(job_id)
        assert job["status"] == "succeeded", job
        assert job["progress"]["download"]["done"] == 3 and job["progress"]["lipsync"]["fraction"] == 1.0
        assert job["created_at"] <= job["started_at"] <= job["finished_at"]
        result = c.get(f"/jobs/{job_id}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    out = open_server.work_dir / "downloaded.mp4"
    out.write_bytes(result.content)
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    with open_server.client() as c:  # DELETE on an ended job frees its stored result
        assert c.delete(f"/jobs/{job_id}").json()["status"] == "succeeded"
        _assert_error(c.get(f"/jobs/{job_id}/result"), 404, "result_not_stored")
    deadline = time.monotonic() + 5
    while not assets.posts("hook/async") and time.monotonic() < deadline:
        time.sleep(0.05)
    (hook,) = assets.posts("hook/async")
    assert _verify_signature(hook.body, hook.headers.get("X-Lipsync-Signature"))
    assert not _verify_signature(hook.body + b" ", hook.headers.get("X-Lipsync-Signature"))
    payload = json.loads(hook.body)
    assert payload["job_id"] == job_id and payload["status"] == "succeeded" and payload["event"] == "job.finished"


def test_post_jobs_and_face_tracking(open_server: ApiServer, assets: AssetServer) -> None:
    with open_server.client() as c:
        resp = c.post("/jobs", json=_body(assets))
        assert resp.status_code == 202
        assert open_server.wait_final(resp.json()["job_id"])["status"] == "succeeded"
        tracked = c.post("/face-tracking", json={"video_url": assets.url("v.mp4"), "characters": [
            {"id": "speaker", "name": "S", "reference_image_url": assets.url("r.jpg")}]})
        assert tracked.status_code == 200, tracked.text
        data = tracked.json()
        assert data["tracks"]["characters"][0]["id"] == "speaker"
        assert c.get(data["download_url"]).status_code == 200


def test_load_50_async_jobs_and_no_temp_files(open_server: ApiServer, assets: AssetServer) -> None:
    """Runs after the corpus (file order): 50 concurrent submissions, all reach a final state, and no
    scratch or temp file is left anywhere."""
    def submit(i: int) -> str:
        with open_server.client() as c:
            resp = c.post("/jobs", json=_body(assets, characters=[]))
            assert resp.status_code == 202, resp.text
            return resp.json()["job_id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(50)))
    finals = [open_server.wait_final(j, timeout=120)["status"] for j in ids]
    assert finals == ["succeeded"] * 50
    with open_server.client() as c:
        assert c.get("/health").json()["queue_depth"] == 0
    assert scratch_leftovers(open_server.work_dir) == []
    for server in (open_server,):
        systmp = Path(server.env["TMPDIR"])
        assert sorted(p.name for p in systmp.iterdir()) == []


def test_strict_server_leaves_no_temp_files(strict_server: ApiServer) -> None:
    assert scratch_leftovers(strict_server.work_dir) == []
    assert list(Path(strict_server.env["TMPDIR"]).iterdir()) == []


# --- a slow fake: cancel, queue bound, restart ----------------------------------------------------------


@pytest.fixture()
def slow_server(tmp_path: Path):
    env = _env(tmp_path / "systmp", LIPSYNC_ALLOW_PRIVATE_URLS="true", LIPSYNC_WORKERS="1", LIPSYNC_QUEUE_SIZE="3",
               LIPSYNC_TEST_FAKE_SECONDS="1.5")
    srv = ApiServer(env=env, work_dir=tmp_path / "work", api_key=API_KEY)
    with srv:
        yield srv


def _wait_status(server: ApiServer, job_id: str, status: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if job["status"] == status:
                return job
            time.sleep(0.05)
    raise TimeoutError(f"{job_id} never {status}: {job}")


def test_cancel_and_queue_full(slow_server: ApiServer, assets: AssetServer) -> None:
    with slow_server.client() as c:
        first = c.post("/jobs", json=_body(assets, webhook_url=assets.url("hook/cancel"))).json()["job_id"]
        _wait_status(slow_server, first, "running")
        queued = [c.post("/jobs", json=_body(assets)).json()["job_id"] for _ in range(3)]
        full = c.post("/jobs", json=_body(assets))
        _assert_error(full, 429, "queue_full")
        assert full.headers.get("retry-after")
        sync_full = c.post("/lipsync", json=_body(assets))
        _assert_error(sync_full, 429, "queue_full")

        cancelled = c.delete(f"/jobs/{queued[0]}").json()
        assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
        assert c.delete(f"/jobs/{first}").json()["status"] == "cancelled"
        for j in queued[1:]:
            c.delete(f"/jobs/{j}")
        assert c.get(f"/jobs/{first}").json()["status"] == "cancelled"
        _assert_error(c.get(f"/jobs/{first}/result"), 409, "result_not_ready")
        deadline = time.monotonic() + 10
        while c.get("/health").json()["running_jobs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/health").json()["running_jobs"] == 0  # the worker let go of the cancelled job
    deadline = time.monotonic() + 5
    while not assets.posts("hook/cancel") and time.monotonic() < deadline:
        time.sleep(0.05)
    (hook,) = assets.posts("hook/cancel")
    assert _verify_signature(hook.body, hook.headers.get("X-Lipsync-Signature"))
    assert json.loads(hook.body)["status"] == "cancelled"
    assert scratch_leftovers(slow_server.work_dir) == []


def test_restart_runs_queued_jobs_and_retries_interrupted(slow_server: ApiServer, assets: AssetServer) -> None:
    with slow_server.client() as c:
        ids = [c.post("/jobs", json=_body(assets)).json()["job_id"] for _ in range(3)]
    _wait_status(slow_server, ids[0], "running")
    slow_server.kill()  # a crash mid-job: nothing gets to clean up
    restarted = ApiServer(env=slow_server.env, work_dir=slow_server.work_dir, api_key=API_KEY)
    with restarted:
        jobs = [restarted.wait_final(j, timeout=30) for j in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert jobs[0]["attempts"] == 2 and jobs[1]["attempts"] == 1
    assert scratch_leftovers(slow_server.work_dir) == []


# --- models not ready ------------------------------------------------------------------------------------


def test_503_while_loading_and_after_failed_load(tmp_path: Path, assets: AssetServer) -> None:
    env = _env(tmp_path / "systmp", LIPSYNC_ALLOW_PRIVATE_URLS="true", PRELOAD_MODELS="true",
               LIPSYNC_TEST_FAKE_LOAD_SECONDS="3", LIPSYNC_TEST_FAKE_LOAD_FAIL="1")
    with ApiServer(env=env, work_dir=tmp_path / "work", api_key=API_KEY) as srv, srv.client() as c:
        assert c.get("/health").json()["status"] == "loading"
        _assert_error(c.post("/lipsync", json=_body(assets)), 503, "not_ready")
        deadline = time.monotonic() + 10
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        health = c.get("/health").json()
        assert health["status"] == "unhealthy" and "wav2lip: missing" in health["models_error"]
        err = _assert_error(c.post("/jobs", json=_body(assets)), 503, "model_not_available")
        assert "wav2lip" in err["message"] and "lipsync models download wav2lip_gan" in err["message"]


def test_second_server_on_same_work_dir_refuses_to_start(open_server: ApiServer) -> None:
    twin = ApiServer(env=open_server.env, work_dir=open_server.work_dir, api_key=API_KEY)
    with pytest.raises(RuntimeError, match="exited early") as exc:
        twin.start(ready_timeout=30)
    assert "another lipsync server is using" in str(exc.value)
    with open_server.client() as c:  # the first one is unaffected
        assert c.get("/health").status_code == 200
