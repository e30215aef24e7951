"""GET /metrics in embedded mode (the default, no Redis): the real server in uvicorn on the fake engine,
scraped and parsed with prometheus_client's text parser, counts exactly what the test did."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api_fixtures import ApiServer, AssetServer, make_media
from lipsync.jobs.metrics import Metrics
from lipsync.jobs.models import JobRecord


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(i in ls for i in labels.items()))


@pytest.mark.slow
def test_embedded_metrics_count_what_happened(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media", seconds=0.5)
    env = {"LIPSYNC_ALLOW_PRIVATE_URLS": "true", "LIPSYNC_TEST_FAKE_SECONDS": "0.05"}
    with AssetServer() as assets, ApiServer(env=env, work_dir=tmp_path / "work", api_key="k") as srv:
        assets.add_file("v.mp4", media.video, "video/mp4")
        assets.add_file("a.wav", media.audio, "audio/wav")
        body = {"video_url": assets.url("v.mp4"), "audio_url": assets.url("a.wav")}
        with srv.client() as c:
            ids = [c.post("/jobs", json=body).json()["job_id"] for _ in range(3)]
            for job_id in ids:
                srv.wait_final(job_id)
            assert c.get("/jobs/0123").status_code == 404
            assert c.post("/jobs", json={"video_url": "x"}).status_code == 422
            assert httpx.get(srv.url + "/metrics", trust_env=False).status_code == 401  # behind the API key
            scrape = c.get("/metrics")
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
        s = _samples(scrape.text)
    assert _value(s, "lipsync_http_requests_total", method="POST", route="/jobs", status="202") == 3
    assert _value(s, "lipsync_http_requests_total", method="POST", route="/jobs", status="422") == 1
    assert _value(s, "lipsync_http_requests_total", route="/jobs/{job_id}", status="404") == 1
    assert _value(s, "lipsync_http_requests_total", route="/jobs/{job_id}", status="200") >= 3  # the polls
    assert _value(s, "lipsync_http_request_duration_seconds_count", route="/jobs", method="POST") == 4
    assert _value(s, "lipsync_jobs_total", kind="lipsync", status="succeeded") == 3
    assert _value(s, "lipsync_jobs_total", status="failed") == 0
    assert _value(s, "lipsync_job_duration_seconds_count", kind="lipsync", status="succeeded") == 3
    assert _value(s, "lipsync_job_duration_seconds_sum", kind="lipsync") >= 3 * 0.05
    assert _value(s, "lipsync_job_queue_wait_seconds_count", kind="lipsync") == 3
    assert _value(s, "lipsync_running_jobs") == 0 and _value(s, "lipsync_queue_depth") == 0
    assert _value(s, "lipsync_model_state", state="ready") == 1
    assert _value(s, "lipsync_model_state", state="loading") == 0


def test_observe_final_histograms_and_frames() -> None:
    m = Metrics()
    now = time.time()
    rec = JobRecord(id="j", kind="lipsync", status="succeeded", params={}, created_at=now - 10,
                    updated_at=now, started_at=now - 7, finished_at=now, result={"stats": {"frames": 250}})
    m.observe_final(rec)
    m.observe_final(JobRecord(id="k", kind="face_tracking", status="cancelled", params={}, created_at=now,
                              updated_at=now))  # cancelled while queued: no start, no duration
    s = _samples(m.render().decode())
    assert _value(s, "lipsync_frames_rendered_total", kind="lipsync") == 250
    assert _value(s, "lipsync_job_queue_wait_seconds_sum", kind="lipsync") == pytest.approx(3, abs=0.01)
    assert _value(s, "lipsync_job_duration_seconds_sum", kind="lipsync") == pytest.approx(7, abs=0.01)
    assert _value(s, "lipsync_job_duration_seconds_bucket", kind="lipsync", le="10.0") == 1
    assert _value(s, "lipsync_job_duration_seconds_bucket", kind="lipsync", le="5.0") == 0
    assert _value(s, "lipsync_jobs_total", kind="face_tracking", status="cancelled") == 1
    assert _value(s, "lipsync_job_queue_wait_seconds_count", kind="face_tracking") == 0
    # A gauge whose source fails (Redis restarting) reports NaN instead of failing the scrape.
    m.watch(queue_depth=lambda: 1 / 0)
    value = _value(_samples(m.render().decode()), "lipsync_queue_depth")
    assert value != value  # NaN


@pytest.mark.gpu
def test_gpu_memory_gauge_reads_torch() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    s = _samples(Metrics().render().decode())
    assert _value(s, "lipsync_gpu_memory_used_bytes", device="cuda:0") >= block.numel()
    assert _value(s, "lipsync_gpu_memory_reserved_bytes", device="cuda:0") >= block.numel()
