"""Model readiness on a real uvicorn on loopback (fake engine, real model store errors): a missing
enhancer degrades the server instead of taking it down, /health names models and states without leaking
server paths, and the job that needs the missing model gets a typed error naming it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_fixtures import ApiServer, AssetServer, Media, make_media

pytestmark = pytest.mark.slow

API_KEY = "models-test-key-0123"
# An absolute POSIX path (or a path-like fragment of one) anywhere in a JSON text.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.-]+/)+[\w.-]*")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def assets(media: Media):
    with AssetServer() as srv:
        srv.add_file("v.mp4", media.video, "video/mp4")
        srv.add_file("a.wav", media.audio, "audio/wav")
        yield srv


def _server(base: Path, **env: str) -> ApiServer:
    models = base / "models"  # empty: every catalog model is missing
    models.mkdir(parents=True)
    full = {"MODELS_DIR": str(models), "PRELOAD_MODELS": "true", "LIPSYNC_ALLOW_PRIVATE_URLS": "true", **env}
    return ApiServer(env=full, work_dir=base / "work", api_key=API_KEY)


def _settled(c: httpx.Client, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = c.get("/health").json()
        if health["status"] != "loading":
            return health
        time.sleep(0.05)
    raise TimeoutError(f"models still loading: {health}")


def _body(assets: AssetServer, **over: Any) -> dict[str, Any]:
    return {"video_url": assets.url("v.mp4"), "audio_url": assets.url("a.wav"), **over}


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    return err


def test_missing_enhancer_degrades_instead_of_taking_the_server_down(tmp_path: Path, assets: AssetServer) -> None:
    with _server(tmp_path, LIPSYNC_TEST_FAKE_MISSING="gfpgan") as srv, srv.client() as c:
        health = _settled(c)
        assert health["status"] == "degraded" and health["models"] == "degraded", health
        assert health["model_states"] == {"insightface": "ready", "wav2lip": "ready", "gfpgan": "missing"}
        assert (health["insightface_loaded"], health["wav2lip_loaded"], health["gfpgan_loaded"]) == (
            True, True, False)  # fmt: skip
        assert "gfpgan: missing" in health["models_error"]

        # Jobs that do not need the enhancer run, sync and async; face tracking too.
        ok = c.post("/lipsync", json=_body(assets, enhance_quality=False))
        assert ok.status_code == 200 and ok.json()["status"] == "succeeded", ok.text
        job = c.post("/jobs", json=_body(assets, enhance_quality=False)).json()["job_id"]
        assert srv.wait_final(job)["status"] == "succeeded"
        tracked = c.post("/face-tracking", json={"video_url": assets.url("v.mp4")})
        assert tracked.status_code == 200, tracked.text

        # The one that does gets a typed error naming the model and both ways out, at once.
        for path in ("/lipsync", "/jobs"):
            # enhance defaults to auto (off on this CPU server): ask for it, as the brief's field.
            err = _error(c.post(path, json=_body(assets, enhance_quality=True)), 503, "model_not_available")
            assert err["field"] == "enhance_quality"
            assert "gfpgan" in err["message"] and '"enhance_quality": false' in err["message"], err
            assert "lipsync models download gfpgan_v1.4" in err["message"], err
            assert str(tmp_path) not in err["message"] and not _ABSOLUTE_PATH.search(err["message"]), err


def test_missing_enhancer_refused_on_the_upload_endpoint_too(tmp_path: Path, media: Media) -> None:
    files = {"video": ("v.mp4", media.video.read_bytes(), "video/mp4"),
             "audio": ("a.wav", media.audio.read_bytes(), "audio/wav")}
    with _server(tmp_path, LIPSYNC_TEST_FAKE_MISSING="gfpgan") as srv, srv.client() as c:
        _settled(c)
        asks = {**files, "options": (None, '{"enhance_quality": true}')}
        err = _error(c.post("/lipsync/upload", files=asks), 503, "model_not_available")
        assert err["field"] == "enhance_quality"
        ok = c.post("/lipsync/upload", files={**files, "options": (None, '{"enhance_quality": false}')})
        assert ok.status_code == 200 and ok.json()["status"] == "succeeded", ok.text


def test_missing_core_model_is_unhealthy_but_face_tracking_still_runs(tmp_path: Path, assets: AssetServer) -> None:
    with _server(tmp_path, LIPSYNC_TEST_FAKE_MISSING="wav2lip") as srv, srv.client() as c:
        health = _settled(c)
        assert health["status"] == "unhealthy" and health["models"] == "failed", health
        assert health["model_states"]["wav2lip"] == "missing" and health["model_states"]["gfpgan"] == "ready"
        err = _error(c.post("/lipsync", json=_body(assets, enhance_quality=False)), 503, "model_not_available")
        assert "wav2lip" in err["message"] and "LIPSYNC_WAV2LIP_CHECKPOINT" in err["message"]
        assert "field" not in err  # nothing the client can change
        assert c.post("/face-tracking", json={"video_url": assets.url("v.mp4")}).status_code == 200


def test_health_leaks_no_paths_without_the_key(tmp_path: Path) -> None:
    with _server(tmp_path, LIPSYNC_TEST_FAKE_MISSING="gfpgan,wav2lip,insightface") as srv:
        with srv.client() as c:
            _settled(c)
        anonymous = httpx.get(srv.url + "/health", trust_env=False)
        wrong_key = httpx.get(srv.url + "/health", headers={"Authorization": "Bearer nope"}, trust_env=False)
        for resp in (anonymous, wrong_key):
            assert resp.status_code == 200
            text = resp.text
            assert str(tmp_path) not in text and not _ABSOLUTE_PATH.search(text), text
            health = resp.json()
            assert health["status"] == "unhealthy" and health["models_detail"] is None
            assert health["model_states"] == dict.fromkeys(("insightface", "wav2lip", "gfpgan"), "missing")
            for name in ("insightface", "wav2lip", "gfpgan"):
                assert f"{name}: missing, model_not_available" in health["models_error"]
        # The operator, holding the key, gets the store's full messages (file, URL, where to put it).
        with srv.client() as c:
            detail = c.get("/health").json()["models_detail"]
        assert set(detail) == {"insightface", "wav2lip", "gfpgan"}
        assert detail["gfpgan"]["code"] == "model_not_available"
        assert str(tmp_path / "models" / "GFPGANv1.4.pth") in detail["gfpgan"]["message"]


def test_lazy_loading_reports_missing_model_after_first_use(tmp_path: Path, assets: AssetServer) -> None:
    with _server(tmp_path, PRELOAD_MODELS="false", LIPSYNC_TEST_FAKE_MISSING="gfpgan") as srv, srv.client() as c:
        health = c.get("/health").json()
        assert health["status"] == "healthy" and health["models"] == "idle"
        assert set(health["model_states"].values()) == {"idle"}
        # accepted: lazy mode loads when it runs (enhancement asked for: auto is off on this CPU server)
        job = c.post("/jobs", json=_body(assets, enhance_quality=True)).json()["job_id"]
        failed = srv.wait_final(job)
        assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_available", failed
        assert failed["error"]["field"] == "enhance_quality" and not _ABSOLUTE_PATH.search(failed["error"]["message"])
        health = c.get("/health").json()
        assert health["status"] == "degraded" and health["model_states"]["gfpgan"] == "missing", health
        ok = c.post("/lipsync", json=_body(assets, enhance_quality=False))
        assert ok.status_code == 200, ok.text
