"""Dubbing through the REST API on the REAL pipeline (random-weight Wav2Lip, dlib faces on a real photo)
behind `lipsync serve` on loopback: `characters[].audio_url`, `/lipsync/upload` with `character_audio`
parts, the main audio left out, and the bad inputs as typed 422s naming the field, with no files left."""

from __future__ import annotations

import importlib.util
import io
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from api_fixtures import ApiServer, AssetServer, scratch_leftovers, temp_leftovers
from conftest import shared_file

pytestmark = [pytest.mark.slow, pytest.mark.shared_media]


def _wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path | bytes]:
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs dlib (pip install 'lipsync[offline]') for an offline real face backend")
    from lipsync.media import decode_audio
    from pipeline_fixtures import write_photo_video, write_random_gfpgan, write_random_wav2lip

    d = tmp_path_factory.mktemp("api_dub")
    speech = decode_audio(shared_file("speech_16k_mono_19.8s_long.wav"), 16000)[16000:32000]
    tone = 0.003 * np.random.default_rng(0).standard_normal(16000)
    return {
        "dir": d,
        "wav2lip": write_random_wav2lip(d / "wav2lip_gan.pth", seed=1),
        "gfpgan": write_random_gfpgan(d / "GFPGANv1.4.pth", seed=2),
        "video": write_photo_video(d / "obama.mp4", shared_file("obama.jpg"), width=288, height=384, fps=10,
                                   seconds=1.0),
        "reference": shared_file("obama2.jpg"),
        # 0.6 s of speech, 1.0 s of room tone, 0.4 s of speech: 2.0 s, 20 frames at 10 fps.
        "stem": _wav_bytes(np.concatenate([speech[:9600], tone, speech[9600:]])),
        "empty_stem": _wav_bytes(np.zeros(0)),
    }


@pytest.fixture(scope="module")
def server(files):
    d = files["dir"]
    env = {
        "LIPSYNC_ALLOW_PRIVATE_URLS": "true",
        "LIPSYNC_FACE_BACKEND": "dlib",
        "LIPSYNC_OFFLINE": "true",
        "LIPSYNC_DEVICE": "cpu",
        "LIPSYNC_WAV2LIP_CHECKPOINT": str(files["wav2lip"]),
        "LIPSYNC_GFPGAN_CHECKPOINT": str(files["gfpgan"]),
        "MODELS_DIR": str(d / "models"),
        "PRELOAD_MODELS": "true",
        "TMPDIR": str(d / "systmp"),
    }
    (d / "systmp").mkdir()
    with ApiServer(env=env, work_dir=d / "work", real=True, api_key="k") as srv, srv.client() as c:
        deadline = time.monotonic() + 120
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        yield srv


@pytest.fixture(scope="module")
def assets(files):
    with AssetServer() as srv:
        srv.add_file("video.mp4", files["video"], "video/mp4")
        srv.add_file("ref.jpg", files["reference"], "image/jpeg")
        srv.add("stem.wav", files["stem"], content_type="audio/wav")
        srv.add("page.wav", b"<!doctype html><html><body>login</body></html>" * 20, content_type="text/html")
        yield srv


def _character(assets: AssetServer, audio: str | None) -> dict:
    ch = {"id": "obama", "name": "Barack Obama", "reference_image_url": assets.url("ref.jpg")}
    return ch if audio is None else {**ch, "audio_url": assets.url(audio)}


def _error(resp) -> dict:
    assert resp.status_code == 422, resp.text
    return resp.json()["error"]


def test_a_characters_own_audio_url_without_main_audio(server: ApiServer, assets: AssetServer) -> None:
    with server.client(timeout=300) as c:
        resp = c.post("/lipsync", json={
            "video_url": assets.url("video.mp4"), "characters": [_character(assets, "stem.wav")],
            "enhance_quality": False, "loop_mode": "pingpong", "silence": "original",
        })  # fmt: skip
        assert resp.status_code == 200, resp.text
        stats = resp.json()["stats"]
        assert stats["frames"] == 20, stats
        obama = stats["characters"][0]
        assert obama["audio"] == "own" and obama["silence_mode"] == "original" and obama["vad"] == "silero"
        assert obama["silent_frames"] >= 8 and obama["speech_frames"] >= 8, obama
        assert obama["frames_passed_through"] >= 2, obama  # the pause, less its ramps
        result = c.get(resp.json()["download_url"])
    assert result.status_code == 200 and len(result.content) > 1000
    assert scratch_leftovers(server.work_dir) == []


def test_no_main_audio_while_a_character_has_no_track_is_refused_at_once(server, assets) -> None:
    with server.client() as c:
        err = _error(c.post("/lipsync", json={
            "video_url": assets.url("video.mp4"), "characters": [_character(assets, None)],
        }))  # fmt: skip
        assert err["field"] == "audio_url" and "'obama'" in err["message"]
        err = _error(c.post("/lipsync", json={"video_url": assets.url("video.mp4")}))
        assert err["field"] == "audio_url"
        err = _error(c.post("/lipsync", json={"video_url": assets.url("video.mp4"), "silence": "mute",
                                              "audio_url": assets.url("stem.wav")}))  # fmt: skip
        assert err["field"] == "silence"


def test_a_stem_that_is_not_audio_names_its_url(server, assets) -> None:
    with server.client(timeout=120) as c:
        err = _error(c.post("/lipsync", json={
            "video_url": assets.url("video.mp4"), "characters": [_character(assets, "page.wav")],
        }))  # fmt: skip
    assert err["code"] == "not_media" and err["field"] == "characters[0].audio_url"
    assert scratch_leftovers(server.work_dir) == []


def _upload(c, files, options: dict, parts: list) -> object:
    return c.post("/lipsync/upload", data={"options": json.dumps(options)}, files=[
        ("video", ("obama.mp4", files["video"].read_bytes(), "video/mp4")),
        ("references", ("obama2.jpg", files["reference"].read_bytes(), "image/jpeg")),
        *parts,
    ])  # fmt: skip


def test_upload_with_a_character_audio_part(server, files) -> None:
    options = {"characters": [{"id": "obama", "reference": "obama2.jpg", "audio": "obama_stem.wav"}],
               "enhance_quality": False, "loop_mode": "pingpong"}  # fmt: skip
    with server.client(timeout=300) as c:
        resp = _upload(c, files, options, [("character_audio", ("obama_stem.wav", files["stem"], "audio/wav"))])
        assert resp.status_code == 200, resp.text
        obama = resp.json()["stats"]["characters"][0]
        assert obama["audio"] == "own" and obama["silence_mode"] == "closed"
        assert obama["frames_synced"] == 20
    assert scratch_leftovers(server.work_dir) == []


def test_upload_bad_character_audio(server, files) -> None:
    stem = ("character_audio", ("obama_stem.wav", files["stem"], "audio/wav"))
    with server.client(timeout=120) as c:
        # A track named by no character: audio for an unknown character.
        options = {"characters": [{"id": "obama", "reference": "obama2.jpg"}]}
        main = ("audio", ("speech.wav", files["stem"], "audio/wav"))
        err = _error(_upload(c, files, options, [main, stem]))
        assert err["field"] == "character_audio" and "'obama_stem.wav'" in err["message"]
        # A character naming a track that was not uploaded.
        options = {"characters": [{"id": "obama", "reference": "obama2.jpg", "audio": "other.wav"}]}
        err = _error(_upload(c, files, options, [stem]))
        assert err["field"] == "characters[0].audio" and "other.wav" in err["message"]
        # No main audio while a character has no track.
        options = {"characters": [{"id": "obama", "reference": "obama2.jpg"}]}
        err = _error(_upload(c, files, options, []))
        assert err["field"] == "audio"
        # A stem that is not audio, and a zero-length one.
        options = {"characters": [{"id": "obama", "reference": "obama2.jpg", "audio": "obama_stem.wav"}]}
        page = ("character_audio", ("obama_stem.wav", b"<html><body>x</body></html>" * 40, "audio/wav"))
        err = _error(_upload(c, files, options, [page]))
        assert err["code"] == "not_media" and err["field"] == "character_audio"
        empty = ("character_audio", ("obama_stem.wav", files["empty_stem"], "audio/wav"))
        err = _error(_upload(c, files, options, [empty]))
        assert err["code"] == "empty_audio" and err["field"] == "character_audio"
    assert scratch_leftovers(server.work_dir) == []
    assert temp_leftovers(server.env["TMPDIR"]) == []
