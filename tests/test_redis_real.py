"""One job through the cluster on the REAL pipeline: `lipsync serve` as an API-only node, `lipsync worker`
(the CLI, models preloaded from seeded random-weight checkpoints of the real architectures, dlib face
backend) on a real redis-server, the result in a shared directory, read back through the API and decoded."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_fixtures import ApiServer, AssetServer
from redis_fixtures import FAST_CLUSTER_ENV, REDIS_SERVER, RedisServer, WorkerProcess
from test_api_full import _characters, _decode, assets, real_assets  # noqa: F401  (module fixtures)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server (apt-get install redis-server)")]


def test_real_pipeline_job_through_the_cluster(real_assets, assets: AssetServer, tmp_path: Path) -> None:  # noqa: F811
    d, f = real_assets
    (tmp_path / "systmp").mkdir()
    with RedisServer(tmp_path / "redis") as redis_srv:
        env = {**FAST_CLUSTER_ENV, "LIPSYNC_REDIS_URL": redis_srv.url, "LIPSYNC_REDIS_NAMESPACE": uuid.uuid4().hex[:8],
               "LIPSYNC_RESULTS_URL": str(tmp_path / "shared"), "LIPSYNC_FACE_BACKEND": "dlib",
               "LIPSYNC_OFFLINE": "true", "LIPSYNC_DEVICE": "cpu", "LIPSYNC_WAV2LIP_CHECKPOINT": str(f["wav2lip"]),
               "LIPSYNC_GFPGAN_CHECKPOINT": str(f["gfpgan"]), "MODELS_DIR": str(d / "models"),
               "TMPDIR": str(tmp_path / "systmp")}
        worker = WorkerProcess(env=env, work_dir=tmp_path / "worker", worker_id="real", real=True)
        worker.start(ready_timeout=240)
        api = ApiServer(env={**env, "LIPSYNC_RUN_WORKERS": "false"}, work_dir=tmp_path / "api", real=True)
        try:
            with api, api.client(timeout=300) as c:
                health = c.get("/health").json()
                assert health["status"] == "healthy" and not health["wav2lip_loaded"]  # the models are on the worker
                resp = c.post("/lipsync", json={"video_url": assets.url("video.mp4"),
                                                "audio_url": assets.url("speech.wav"),
                                                "characters": _characters(assets), "enhance_quality": False})
                assert resp.status_code == 200, resp.text + worker.log()
                data = resp.json()
                assert data["stats"]["frames"] == 10 and data["stats"]["faces_synced"] == 10, data["stats"]
                got = c.get(data["download_url"])
                assert got.status_code == 200
            out = tmp_path / "out.mp4"
            out.write_bytes(got.content)
            assert _decode(out) == (10, 288, 384, True)
            text = httpx.get(worker.metrics_url, timeout=5, trust_env=False).text
            samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                       if not s.labels or s.labels.get("kind") == "lipsync"}
            assert samples["lipsync_frames_rendered_total"] == 10
            assert samples["lipsync_jobs_total"] == 1
        finally:
            worker.stop()
