"""POST /lipsync/upload (multipart files instead of URLs) against real uvicorn processes on loopback:
the fake engine for the flows, limits, errors, cleanup and restart; one run on the real pipeline."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from api_fixtures import ApiServer, Media, make_media, scratch_leftovers, temp_leftovers
from conftest import shared_file
from lipsync.api.receive import upload_body_limit

pytestmark = pytest.mark.slow

API_KEY = "upload-key-0123456789"
# Small on purpose: the largest test file (1 s of WAV) is ~32 KB; the oversized part is just above this.
MAX_PART = 60_000


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def _env(systmp: Path, **extra: str) -> dict[str, str]:
    systmp.mkdir(parents=True, exist_ok=True)
    # TMPDIR is the server's: the test can then see a temp file it leaves behind (none may be).
    return {"LIPSYNC_MAX_DOWNLOAD_BYTES": str(MAX_PART), "TMPDIR": str(systmp), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("upload")
    with ApiServer(env=_env(base / "systmp", LIPSYNC_WORKERS="2"), work_dir=base / "work", api_key=API_KEY) as srv:
        yield srv


def _files(media: Media, *, video: bytes | None = None, refs: dict[str, bytes] | None = None,
           drop: str | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    parts = [
        ("video", ("talk.mp4", media.video.read_bytes() if video is None else video, "video/mp4")),
        ("audio", ("speech.wav", media.audio.read_bytes(), "audio/wav")),
    ]
    refs = {"speaker.jpg": media.reference.read_bytes()} if refs is None else refs
    parts += [("references", (name, data, "image/jpeg")) for name, data in refs.items()]
    return [p for p in parts if p[0] != drop]


def _options(**over: Any) -> dict[str, str]:
    opts: dict[str, Any] = {"characters": [{"id": "speaker", "name": "Main Speaker", "reference": "speaker.jpg"}],
                            "enhance_quality": False}
    opts.update(over)
    return {"options": json.dumps(opts)}


def _decode(data: bytes, tmp: Path) -> tuple[int, bool]:
    path = tmp / "result.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        has_audio = bool(container.streams.audio)
        frames = sum(1 for _ in container.decode(video=0))
    return frames, has_audio


def _assert_error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert set(data) == {"error"}, data
    err = data["error"]
    assert set(err) <= {"code", "message", "field"} and err["message"], err
    assert err["code"] == code, err
    assert err.get("field") == field, err
    assert "Traceback" not in resp.text and "/work/" not in err["message"], err
    return err


def _no_leftovers(srv: ApiServer, timeout: float = 5.0) -> None:
    """Scratch and the system temp dir are empty (waiting a moment for a worker's cleanup)."""
    deadline = time.monotonic() + timeout
    while scratch_leftovers(srv.work_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scratch_leftovers(srv.work_dir) == []
    assert temp_leftovers(srv.env["TMPDIR"]) == []


# --- flows ----------------------------------------------------------------------------------------------


def test_sync_upload_result_decodes(server: ApiServer, media: Media, tmp_path: Path) -> None:
    with server.client() as c:
        resp = c.post("/lipsync/upload", files=_files(media), data=_options(loop_mode="pingpong"))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "succeeded" and body["output_url"] is None
        assert body["duration"] == pytest.approx(1.0, abs=0.11)
        job = c.get(f"/jobs/{body['job_id']}").json()
        assert job["kind"] == "lipsync" and job["progress"]["download"]["done"] == 3  # video, audio, 1 ref
        result = c.get(body["download_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    # The fake engine "renders" by copying the uploaded video (10 frames, no audio track).
    assert _decode(result.content, tmp_path)[0] == 10
    assert result.content == media.video.read_bytes()
    _no_leftovers(server)


def test_async_upload_with_several_references(server: ApiServer, media: Media, tmp_path: Path) -> None:
    ref = media.reference.read_bytes()
    options = _options(**{"async": True, "characters": [
        {"id": "a", "reference": ["front.jpg", "side.jpg"]}, {"id": "b", "reference": "side.jpg"}]})
    with server.client() as c:
        resp = c.post("/lipsync/upload", files=_files(media, refs={"front.jpg": ref, "side.jpg": ref}), data=options)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        assert resp.headers["location"] == f"/jobs/{job_id}"
        job = server.wait_final(job_id)
        assert job["status"] == "succeeded", job
        assert job["progress"]["download"]["total"] == 5  # video, audio and three reference uses
        result = c.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200
    assert _decode(result.content, tmp_path)[0] == 10
    _no_leftovers(server)


def test_openapi_documents_the_upload(server: ApiServer) -> None:
    with server.client() as c:
        op = c.get("/openapi.json").json()["paths"]["/lipsync/upload"]["post"]
        assert "POST /lipsync/upload" in c.get("/").json()["endpoints"]
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == {"video", "audio", "references", "character_audio", "options"}
    assert schema["required"] == ["video"]  # audio may be left out when every character sends its own
    example = json.loads(schema["properties"]["options"]["example"])
    assert example["characters"][0]["reference"]
    assert "references" in op["description"] and "curl" in op["description"]


# --- errors ---------------------------------------------------------------------------------------------


def _with_epilogue(size: int) -> Iterator[bytes]:
    """A valid multipart body followed by ``size`` bytes after its closing boundary (which parsers
    ignore): only the running total can stop it. Sent chunked, so no Content-Length announces it."""
    yield b'--b0undary\r\nContent-Disposition: form-data; name="options"\r\n\r\n{}\r\n--b0undary--\r\n'
    for _ in range(size // 65536 + 1):
        yield b"x" * 65536


ERROR_CASES = [
    # (name, kwargs for client.post, status, code, field)
    ("missing video part", lambda m: {"files": _files(m, drop="video"), "data": _options()},
     422, "validation_error", "video"),
    ("missing audio part", lambda m: {"files": _files(m, drop="audio"), "data": _options()},
     422, "validation_error", "audio"),
    ("reference not uploaded", lambda m: {"files": _files(m), "data": _options(characters=[
        {"id": "a", "reference": "speaker.jpg"}, {"id": "b", "reference": ["speaker.jpg", "other.jpg"]}])},
     422, "validation_error", "characters[1].reference"),
    ("options not JSON", lambda m: {"files": _files(m), "data": {"options": "{characters: oops"}},
     400, "invalid_json", "options"),
    ("options arrays nested 30000 deep", lambda m: {"files": _files(m), "data": {"options": "[" * 30000 + "]" * 30000}},
     400, "invalid_json", "options"),
    ("options objects nested 10000 deep", lambda m: {
        "files": _files(m), "data": {"options": '{"a":' * 10000 + "1" + "}" * 10000}},
     400, "invalid_json", "options"),
    ("options not UTF-8", lambda m: {"files": [*_files(m), ("options", (None, b'{"loop_mode": "\xff"}', None))]},
     400, "invalid_json", "options"),
    ("boundary of 300 characters", lambda m: {
        "content": b"--" + b"b" * 300 + b"--\r\n",
        "headers": {"Content-Type": "multipart/form-data; boundary=" + "b" * 300}},
     422, "validation_error", "content-type"),
    ("boundary of 71 characters", lambda m: {
        "content": b"--" + b"b" * 71 + b"--\r\n",
        "headers": {"Content-Type": "multipart/form-data; boundary=" + "b" * 71}},
     422, "validation_error", "content-type"),
    ("options not an object", lambda m: {"files": _files(m), "data": {"options": "[1, 2]"}},
     422, "validation_error", "options"),
    ("bad option value", lambda m: {"files": _files(m), "data": _options(loop_mode="bounce")},
     422, "validation_error", "loop_mode"),
    ("URL field in options", lambda m: {"files": _files(m), "data": _options(video_url="http://x/v.mp4")},
     422, "validation_error", "video_url"),
    ("unknown part", lambda m: {"files": _files(m), "data": {"sound": "x"}}, 422, "validation_error", "sound"),
    ("HTML file as video", lambda m: {
        "files": _files(m, video=b"<!DOCTYPE html><html><body>Sign in</body></html>" * 20), "data": _options()},
     422, "not_media", "video"),
    ("image as audio", lambda m: {"files": [("video", ("v.mp4", m.video.read_bytes(), "video/mp4")),
                                            ("audio", ("a.jpg", m.reference.read_bytes(), "image/jpeg"))]},
     422, "not_media", "audio"),
    ("empty video", lambda m: {"files": _files(m, video=b""), "data": _options()}, 422, "not_media", "video"),
    ("oversized part", lambda m: {"files": _files(m, video=m.video.read_bytes() * (MAX_PART // 7000 + 2)),
                                  "data": _options()},
     413, "download_too_large", "video"),
    ("not multipart", lambda m: {"json": {"video": "x"}}, 415, "unsupported_media_type", None),
    ("body over the cap (Content-Length)", lambda m: {
        "content": b"x" * (upload_body_limit(MAX_PART) + 100_000),
        "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}},
     413, "request_too_large", None),
    ("body over the cap (chunked)", lambda m: {
        "content": _with_epilogue(upload_body_limit(MAX_PART) + MAX_PART),
        "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}},
     413, "request_too_large", None),
    ("wrong API key", lambda m: {"files": _files(m), "data": _options(), "headers": {"Authorization": "Bearer no"}},
     401, "unauthorized", None),
    ("no API key, chunked body", lambda m: {
        "content": _with_epilogue(MAX_PART * 20),
        "headers": {"Content-Type": "multipart/form-data; boundary=b0undary", "Authorization": ""}},
     401, "unauthorized", None),
]


@pytest.mark.parametrize(("name", "request_kwargs", "status", "code", "field"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_upload_errors(server: ApiServer, media: Media, name: str, request_kwargs, status: int, code: str,
                       field: str | None) -> None:
    with server.client() as c:
        resp = c.post("/lipsync/upload", **request_kwargs(media))
    err = _assert_error(resp, status, code, field)
    if name == "reference not uploaded":
        assert "'other.jpg'" in err["message"] and "'speaker.jpg'" in err["message"]
    _no_leftovers(server)  # nothing written before the failure survives it


def test_probe_failure_names_the_uploaded_file(server: ApiServer, media: Media) -> None:
    """A file that sniffs as MP4 but cannot be opened fails in the job, named by part and file name."""
    with server.client() as c:
        resp = c.post("/lipsync/upload", files=_files(media, video=media.truncated.read_bytes()), data=_options())
    err = _assert_error(resp, 422, "corrupt_media", "video")
    assert "'talk.mp4'" in err["message"] and "video.mp4" not in err["message"]
    _no_leftovers(server)


# --- cancel and restart ---------------------------------------------------------------------------------


def test_cancel_and_restart_delete_uploads(tmp_path: Path, media: Media) -> None:
    env = _env(tmp_path / "systmp", LIPSYNC_WORKERS="1", LIPSYNC_TEST_FAKE_SECONDS="1.5")
    srv = ApiServer(env=env, work_dir=tmp_path / "work", api_key=API_KEY)

    def submit(c: httpx.Client) -> str:
        resp = c.post("/lipsync/upload", files=_files(media), data=_options(**{"async": True}))
        assert resp.status_code == 202, resp.text
        return resp.json()["job_id"]

    with srv, srv.client() as c:
        running, queued = submit(c), submit(c)
        assert len(scratch_leftovers(srv.work_dir)) >= 6  # both jobs' files wait in their scratch folders
        assert c.delete(f"/jobs/{queued}").json()["status"] == "cancelled"
        assert srv.wait_final(running)["status"] == "succeeded"
        _no_leftovers(srv)  # the cancelled job's uploads went when the worker skipped it
        waiting = [submit(c) for _ in range(3)]
    # Stopped with one job running (requeued) and two queued: their uploads survive the restart and they
    # run; one folder removed by hand in between gives that job a clear error instead.
    lost = waiting.pop()
    shutil.rmtree(srv.work_dir / "tmp" / lost)
    restarted = ApiServer(env=env, work_dir=tmp_path / "work", api_key=API_KEY)
    with restarted:
        for job_id in waiting:
            job = restarted.wait_final(job_id, timeout=30)
            assert job["status"] == "succeeded", job["error"]
        job = restarted.wait_final(lost, timeout=30)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "upload_lost" and job["error"]["field"] == "video", job
        assert "send the request again" in job["error"]["message"]
        _no_leftovers(restarted)


# --- the real pipeline ----------------------------------------------------------------------------------


def test_real_pipeline_upload(tmp_path: Path) -> None:
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs dlib (pip install 'lipsync[offline]') for an offline real face backend")
    from pipeline_fixtures import (
        write_photo_video,
        write_random_gfpgan,
        write_random_wav2lip,
        write_speechlike_wav,
    )

    photo, reference = shared_file("obama.jpg"), shared_file("obama2.jpg")
    # Same setup as test_api_full.py: seeded random Wav2Lip weights, dlib faces, a real photo video.
    video = write_photo_video(tmp_path / "obama.mp4", photo, width=288, height=384, fps=10, seconds=1.0)
    audio = write_speechlike_wav(tmp_path / "speech.wav", 1.0)
    env = {
        "LIPSYNC_FACE_BACKEND": "dlib",
        "LIPSYNC_OFFLINE": "true",
        "LIPSYNC_DEVICE": "cpu",
        "LIPSYNC_WAV2LIP_CHECKPOINT": str(write_random_wav2lip(tmp_path / "wav2lip_gan.pth", seed=1)),
        # Preloading loads every model, GFPGAN included, even though this request does not enhance.
        "LIPSYNC_GFPGAN_CHECKPOINT": str(write_random_gfpgan(tmp_path / "GFPGANv1.4.pth", seed=2)),
        "MODELS_DIR": str(tmp_path / "models"),
        "TMPDIR": str(tmp_path / "systmp"),
    }
    (tmp_path / "systmp").mkdir()
    options = {"characters": [{"id": "obama", "name": "Barack Obama", "reference": "obama2.jpg"}],
               "enhance_quality": False}  # GFPGAN costs ~20 s a face on CPU; the pipeline tests cover it
    with ApiServer(env=env, work_dir=tmp_path / "work", real=True, api_key="real-key") as srv, \
            srv.client(timeout=300) as c:
        deadline = time.monotonic() + 120  # models preload: /health says "loading" until they are in
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        resp = c.post("/lipsync/upload", data={"options": json.dumps(options)}, files=[
            ("video", ("obama.mp4", video.read_bytes(), "video/mp4")),
            ("audio", ("speech.wav", audio.read_bytes(), "audio/wav")),
            ("references", ("obama2.jpg", reference.read_bytes(), "image/jpeg")),
        ])
        assert resp.status_code == 200, resp.text
        data = resp.json()
        stats = data["stats"]
        assert stats["frames"] == 10 and stats["faces_synced"] == 10, stats
        assert stats["characters"][0]["id"] == "obama"
        result = c.get(data["download_url"])
        assert result.status_code == 200
        assert _decode(result.content, tmp_path) == (10, True)
        _no_leftovers(srv)
