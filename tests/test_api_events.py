"""GET /jobs/{id}/events (server-sent events), GET /jobs (the list), GET /options and
POST /face-tracking/upload, against a real uvicorn on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from api_fixtures import ApiServer, FakeEngine, free_port, make_media
from lipsync.options import LipSyncOptions

pytestmark = pytest.mark.slow

KEY = "events-key-0123456789"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("ev-media"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ApiServer]:
    env = {"LIPSYNC_TEST_FAKE_SECONDS": "1.0", "LIPSYNC_WORKERS": "2"}
    with ApiServer(env=env, work_dir=tmp_path_factory.mktemp("ev") / "work", api_key=KEY) as srv:
        yield srv


def _upload(client: httpx.Client, media, path: str = "/lipsync/upload", **options) -> str:
    files = [("video", ("face.mp4", media.video.read_bytes(), "video/mp4"))]
    if path == "/lipsync/upload":
        files.append(("audio", ("speech.wav", media.audio.read_bytes(), "audio/wav")))
    files.append(("options", ("o.json", json.dumps({"async": True, **options}), "application/json")))
    resp = client.post(path, files=files)
    assert resp.status_code == 202, resp.text
    return resp.json()["job_id"]


def _events(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    name = None
    with client.stream("GET", f"/jobs/{job_id}/events") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_events_arrive_in_order_and_end_with_the_final_state(server, media):
    with server.client() as c:
        job_id = _upload(c, media)
        events = _events(c, job_id)
    names = [n for n, _ in events]
    assert names[-1] == "end" and names.count("end") == 1 and set(names[:-1]) == {"progress"}
    final = events[-1][1]
    assert final["id"] == job_id and final["status"] == "succeeded"
    progress = [e for n, e in events if n == "progress"]
    # Each stage's done count never goes back, and the lipsync stage is seen advancing.
    order = ["queued", "running", "succeeded"]
    assert [order.index(p["status"]) for p in progress] == sorted(order.index(p["status"]) for p in progress)
    done = [p["done"] for p in progress if p["stage"] == "lipsync"]
    assert done == sorted(done) and len(set(done)) >= 3, progress
    # Every stage so far travels with each event, so a stage shorter than a poll is not lost.
    assert {"download", "lipsync"} <= set(progress[-1]["progress"]), progress[-1]


def test_events_need_auth_and_a_known_job(server):
    assert httpx.get(server.url + "/jobs/x/events", trust_env=False).status_code == 401
    with server.client() as c:
        resp = c.get("/jobs/0123456789abcdef0123456789abcdef/events")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "job_not_found"


def test_jobs_list_newest_first_paginated_and_filtered(server, media):
    with server.client() as c:
        ids = [_upload(c, media, "/face-tracking/upload") for _ in range(3)]
        for job_id in ids:
            deadline = time.monotonic() + 60
            while c.get(f"/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        first = c.get("/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in first["jobs"]] == ids[::-1][:2] and first["next"] == ids[1]
        second = c.get("/jobs", params={"limit": 2, "before": first["next"]}).json()
        assert second["jobs"][0]["id"] == ids[0]
        done = c.get("/jobs", params={"status": "succeeded", "limit": 100}).json()["jobs"]
        assert all(j["status"] == "succeeded" for j in done) and set(ids) <= {j["id"] for j in done}
        assert all(j["kind"] == "face_tracking" for j in first["jobs"])
        for params, field in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"status": "done"}, "status"),
                              ({"before": "nope"}, "before")):
            resp = c.get("/jobs", params=params)
            assert resp.status_code in (404, 422) and resp.json()["error"]["field"] == field, resp.text


def test_tracking_upload_takes_every_tracking_setting(server, media):
    with server.client() as c:
        job_id = _upload(c, media, "/face-tracking/upload", sample_every=3, pads=[1, 2, 3, 4])
        final = _events(c, job_id)[-1][1]
        assert final["status"] == "succeeded", final
        assert final["result"]["stats"]["options"]["sample_every"] == 3
        resp = c.post("/face-tracking/upload", files=[
            ("video", ("face.mp4", media.video.read_bytes(), "video/mp4")),
            ("options", ("o.json", json.dumps({"loop_mode": "none"}), "application/json"))])
        # loop_mode is a lip-sync setting: a tracking job refuses it by name.
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "loop_mode", resp.text


def test_options_endpoint_is_the_model(server):
    schema = httpx.get(server.url + "/options", trust_env=False).json()  # public, like /openapi.json
    by_name = {f["name"]: f for f in schema["fields"]}
    assert set(by_name) == set(LipSyncOptions.model_fields)
    assert by_name["crossfade_frames"]["max"] == 250 and by_name["loop_mode"]["default"] == "crossfade"
    assert by_name["enhance"]["choices"] == ["auto", "on", "off"]
    page = httpx.get(server.url + "/ui", trust_env=False)
    assert page.status_code == 200 and "<form" in page.text
    assert httpx.get(server.url + "/ui/static/app.js", trust_env=False).status_code == 200


def test_a_disconnect_leaves_no_stream_running(tmp_path, media, monkeypatch):
    """In-process uvicorn, so the test can see the app's count of open event streams."""
    from lipsync.api import create_app
    from lipsync.config import Settings

    monkeypatch.setenv("LIPSYNC_TEST_FAKE_SECONDS", "30")
    app = create_app(Settings(work_dir=tmp_path / "work", allow_private_urls=True), pipeline_factory=FakeEngine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=30) as c:
            job_id = _upload(c, media)
            streams = app.state.lipsync.event_streams
            with c.stream("GET", f"/jobs/{job_id}/events") as resp:
                lines = resp.iter_lines()
                while not next(lines).startswith("event: progress"):
                    pass
                assert streams.open == 1
            # The client went away mid-job: the stream's generator is cancelled within a poll or two.
            deadline = time.monotonic() + 5
            while streams.open:
                assert time.monotonic() < deadline, "the event stream kept running after the disconnect"
                time.sleep(0.05)
            c.delete(f"/jobs/{job_id}")
    finally:
        server.should_exit = True
        thread.join(10)
