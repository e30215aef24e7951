"""The full flow on the REAL pipeline behind `lipsync serve` on loopback.

Seeded random-weight checkpoints of the real Wav2Lip and GFPGAN architectures (written in the public files'
formats and passed through LIPSYNC_WAV2LIP_CHECKPOINT / LIPSYNC_GFPGAN_CHECKPOINT), the dlib face backend
(offline, real detection and recognition) on a video made from a real photo, assets from a local HTTP
server, and the output PUT to a presigned URL of a real moto S3 server, then read back and decoded.
Bad media that only the real pipeline can judge (no face in the video, no face in the reference,
a truncated MP4) goes through it here too.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import av
import pytest

from api_fixtures import ApiServer, AssetServer, moto_s3, presigned_put, scratch_leftovers, temp_leftovers
from conftest import shared_file

pytestmark = pytest.mark.slow

BUCKET = "results"


@pytest.fixture(scope="module")
def real_assets(tmp_path_factory):
    if importlib.util.find_spec("dlib") is None:
        pytest.skip("needs dlib (pip install 'lipsync[offline]') for an offline real face backend")
    import cv2

    from pipeline_fixtures import (
        background,
        write_photo_video,
        write_random_gfpgan,
        write_random_wav2lip,
        write_speechlike_wav,
        write_video,
    )

    photo, reference = shared_file("obama.jpg"), shared_file("obama2.jpg")
    d = tmp_path_factory.mktemp("real")
    files = {
        "wav2lip": write_random_wav2lip(d / "wav2lip_gan.pth", seed=1),
        "gfpgan": write_random_gfpgan(d / "GFPGANv1.4.pth", seed=2),
        # 288x384 keeps the face ~100 px: big enough for dlib's HOG detector.
        "video": write_photo_video(d / "obama.mp4", photo, width=288, height=384, fps=10, seconds=1.0),
        "audio": write_speechlike_wav(d / "speech.wav", 1.0),
        "reference": reference,
    }
    bg = background(288, 384, seed=7)
    files["noface"] = write_video(d / "noface.mp4", lambda i: bg, 10, 10)
    files["noface_ref"] = d / "noface.jpg"
    cv2.imwrite(str(files["noface_ref"]), background(200, 200, seed=9))
    data = files["video"].read_bytes()
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    return d, files


@pytest.fixture(scope="module")
def assets(real_assets):
    _, f = real_assets
    with AssetServer() as srv:
        srv.add_file("video.mp4", f["video"], "video/mp4")
        srv.add_file("speech.wav", f["audio"], "audio/wav")
        srv.add_file("ref.jpg", f["reference"], "image/jpeg")
        srv.add_file("noface.mp4", f["noface"], "video/mp4")
        srv.add_file("noface.jpg", f["noface_ref"], "image/jpeg")
        srv.add_file("truncated.mp4", f["truncated"], "video/mp4")
        yield srv


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as (client, _endpoint):
        yield client


@pytest.fixture(scope="module")
def real_server(real_assets):
    d, f = real_assets
    env = {
        "LIPSYNC_ALLOW_PRIVATE_URLS": "true",
        "LIPSYNC_FACE_BACKEND": "dlib",
        "LIPSYNC_OFFLINE": "true",
        "LIPSYNC_DEVICE": "cpu",
        "LIPSYNC_WAV2LIP_CHECKPOINT": str(f["wav2lip"]),
        "LIPSYNC_GFPGAN_CHECKPOINT": str(f["gfpgan"]),
        "MODELS_DIR": str(d / "models"),
        "PRELOAD_MODELS": "true",
        "TMPDIR": str(d / "systmp"),
    }
    (d / "systmp").mkdir()
    with ApiServer(env=env, work_dir=d / "work", real=True, api_key="real-key") as srv, srv.client() as c:
        # PRELOAD_MODELS: /health answers at once, with status "loading" until the models are in.
        deadline = time.monotonic() + 120
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        yield srv


def _characters(assets: AssetServer, ref: str = "ref.jpg") -> list[dict]:
    return [{"id": "obama", "name": "Barack Obama", "reference_image_url": assets.url(ref)}]


def _decode(path: Path) -> tuple[int, int, int, bool]:
    with av.open(str(path)) as container:
        has_audio = bool(container.streams.audio)
        frames = [f for f in container.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height, has_audio


def test_full_flow_real_pipeline_to_s3(real_server: ApiServer, assets: AssetServer, s3, tmp_path: Path) -> None:
    with real_server.client(timeout=300) as c:
        health = c.get("/health").json()
        assert health["status"] == "healthy" and health["wav2lip_loaded"] and health["gfpgan_loaded"], health
        assert health["insightface_loaded"]  # the face backend (dlib here) is loaded

        url = presigned_put(s3, BUCKET, "out/lipsync.mp4")
        resp = c.post("/lipsync", json={
            "video_url": assets.url("video.mp4"),
            "audio_url": assets.url("speech.wav"),
            "upload_url": url,
            "characters": _characters(assets),
            # GFPGAN at 512x512 costs ~20 s a face on this CPU; enhancement is covered by the pipeline's
            # own tests, this one covers the service around it.
            "enhance_quality": False,
            "loop_mode": "pingpong",
        })
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["status"] == "succeeded" and data["download_url"] is None
    assert data["output_url"] == url.split("?")[0]  # the signature never comes back
    assert data["duration"] == pytest.approx(1.0, abs=0.11)
    stats = data["stats"]
    assert stats["frames"] == 10 and stats["faces_synced"] == 10, stats
    assert stats["characters"][0]["id"] == "obama" and stats["characters"][0]["frames_synced"] == 10

    obj = s3.get_object(Bucket=BUCKET, Key="out/lipsync.mp4")
    assert obj["ContentType"] == "video/mp4"
    out = tmp_path / "from_s3.mp4"
    out.write_bytes(obj["Body"].read())
    frames, width, height, has_audio = _decode(out)
    assert (frames, width, height, has_audio) == (10, 288, 384, True)


def test_face_tracking_real(real_server: ApiServer, assets: AssetServer, s3, tmp_path: Path) -> None:
    url = presigned_put(s3, BUCKET, "out/tracking.mp4")
    with real_server.client(timeout=300) as c:
        resp = c.post("/face-tracking", json={"video_url": assets.url("video.mp4"), "upload_url": url,
                                              "characters": _characters(assets)})
    assert resp.status_code == 200, resp.text
    tracks = resp.json()["tracks"]
    (obama,) = tracks["characters"]
    assert obama["id"] == "obama" and len(obama["frames"]) == 10 and tracks["num_frames"] == 10
    out = tmp_path / "tracking.mp4"
    out.write_bytes(s3.get_object(Bucket=BUCKET, Key="out/tracking.mp4")["Body"].read())
    assert _decode(out)[0] == 10


@pytest.mark.parametrize(
    ("video", "ref", "status", "code", "field"),
    [
        ("noface.mp4", "ref.jpg", 422, "no_face_found", None),
        ("video.mp4", "noface.jpg", 422, "reference_no_face", "characters[0].reference_image_url"),
        ("truncated.mp4", "ref.jpg", 422, "corrupt_media", "video_url"),
    ],
    ids=["video with no faces", "reference image with no face", "truncated mp4"],
)
def test_real_media_errors(real_server: ApiServer, assets: AssetServer, video: str, ref: str, status: int,
                           code: str, field: str | None) -> None:
    with real_server.client(timeout=300) as c:
        resp = c.post("/lipsync", json={"video_url": assets.url(video), "audio_url": assets.url("speech.wav"),
                                        "characters": _characters(assets, ref), "enhance_quality": False})
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    if field:
        assert err["field"] == field
    assert "Traceback" not in resp.text and "/work" not in err["message"] and "ref0" not in err["message"]


def test_no_files_left_behind(real_server: ApiServer) -> None:
    assert scratch_leftovers(real_server.work_dir) == []
    assert temp_leftovers(real_server.env["TMPDIR"]) == []
