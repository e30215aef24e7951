"""The cluster on a real redis-server: the API in uvicorn (``--no-workers``), worker processes on the fake
engine, assets and webhook receivers on loopback. Each semantics point of the scale-out design is one
test: at-least-once without double completion, SIGKILL recovery, cancel, poison jobs, SIGTERM, the
cluster-wide queue limit, a Redis crash, uploads through the shared store, and the metrics."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api_fixtures import ApiServer, AssetServer, Media, make_media, moto_s3
from redis_fixtures import FAST_CLUSTER_ENV, REDIS_SERVER, RedisServer, WorkerProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server (apt-get install redis-server)")]

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"), seconds=0.5, fps=10)


@pytest.fixture(scope="module")
def assets(media: Media) -> Iterator[AssetServer]:
    with AssetServer() as srv:
        srv.add_file("video.mp4", media.video, "video/mp4")
        srv.add_file("speech.wav", media.audio, "audio/wav")
        srv.add_file("poison.mp4", media.no_face_video, "video/mp4")
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


class Cluster:
    def __init__(self, redis_url: str, root: Path, extra: dict[str, str] | None = None) -> None:
        self.ns = f"t{uuid.uuid4().hex[:8]}"
        self.root = root
        self.env = {**FAST_CLUSTER_ENV, "LIPSYNC_REDIS_URL": redis_url, "LIPSYNC_REDIS_NAMESPACE": self.ns,
                    "LIPSYNC_RESULTS_URL": f"file://{root / 'shared'}", **(extra or {})}
        self.apis: list[ApiServer] = []
        self.workers: list[WorkerProcess] = []
        self.r = redis.Redis.from_url(redis_url, decode_responses=True)

    def api(self, **env: str) -> ApiServer:
        srv = ApiServer(env={**self.env, "LIPSYNC_RUN_WORKERS": "false", **env},
                        work_dir=self.root / f"api{len(self.apis)}").start()
        self.apis.append(srv)
        return srv

    def worker(self, **env: str) -> WorkerProcess:
        wid = f"w{len(self.workers)}-{self.ns}"
        proc = WorkerProcess(env={**self.env, **env}, work_dir=self.root / "workers", worker_id=wid).start()
        self.workers.append(proc)
        return proc

    def owner(self, job_id: str) -> str:
        return self.r.hget(f"{self.ns}:job:{job_id}", "owner") or ""

    def by_id(self, worker_id: str) -> WorkerProcess:
        return next(w for w in self.workers if w.worker_id == worker_id)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        for a in self.apis:
            a.stop()
        self.r.close()


@pytest.fixture
def cluster(server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(server.url, tmp_path)
    yield c
    c.close()


def job_body(assets: AssetServer, hook: str | None = None, video: str = "video.mp4") -> dict:
    body = {"video_url": assets.url(video), "audio_url": assets.url("speech.wav")}
    if hook:
        body["webhook_url"] = assets.url(hook)
    return body


def wait_until(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_running(api: ApiServer, job_id: str, timeout: float = 30) -> dict:
    with api.client() as c:
        return wait_until(lambda: (j := c.get(f"/jobs/{job_id}").json())["status"] == "running"
                          and j["progress"] and j, timeout, f"job {job_id} running")


def hooks_by_job(assets: AssetServer, path: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for post in assets.posts(path):
        body = json.loads(post.body)
        out.setdefault(body["job_id"], []).append(body)
    return out


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=5, trust_env=False).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


# --- tests ------------------------------------------------------------------------------------------


def test_hundred_jobs_three_workers(cluster: Cluster, assets: AssetServer, media: Media) -> None:
    api = cluster.api(LIPSYNC_QUEUE_SIZE="200")
    workers = [cluster.worker(LIPSYNC_TEST_FAKE_SECONDS="0.02") for _ in range(3)]
    hook = f"hook/{cluster.ns}"
    with api.client() as c:
        def submit(_: int) -> str:
            resp = c.post("/jobs", json=job_body(assets, hook))
            assert resp.status_code == 202, resp.text
            return resp.json()["job_id"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(submit, range(100)))
        assert len(set(ids)) == 100
        jobs = {i: api.wait_final(i, timeout=180) for i in ids}
        assert Counter(j["status"] for j in jobs.values()) == {"succeeded": 100}, \
            [j["error"] for j in jobs.values() if j["error"]]
        # Each succeeded once: one webhook per job, and the workers recorded 100 successes in all.
        hooks = wait_until(lambda: (h := hooks_by_job(assets, hook)) and len(h) == 100 and h, 30, "100 webhooks")
        assert all(len(v) == 1 and v[0]["status"] == "succeeded" for v in hooks.values())
        per_worker = [metric(scrape(w.metrics_url), "lipsync_jobs_total", status="succeeded") for w in workers]
        assert sum(per_worker) == 100 and all(n > 0 for n in per_worker), per_worker
        # Any node serves the result, from the shared store.
        got = c.get(f"/jobs/{ids[0]}/result")
        assert got.status_code == 200 and got.content == media.video.read_bytes()
        api_metrics = scrape(api.url + "/metrics")
    assert metric(api_metrics, "lipsync_http_requests_total", method="POST", route="/jobs", status="202") == 100
    assert metric(api_metrics, "lipsync_http_requests_total", route="/jobs/{job_id}") >= 100
    assert metric(api_metrics, "lipsync_queue_depth") == 0
    assert metric(api_metrics, "lipsync_workers_alive") == 3
    w = scrape(workers[0].metrics_url)
    assert metric(w, "lipsync_job_duration_seconds_count") == per_worker[0]
    assert metric(w, "lipsync_job_queue_wait_seconds_count") == per_worker[0]
    assert metric(w, "lipsync_model_state", state="ready") == 1
    assert metric(w, "lipsync_running_jobs") == 0


def test_sigkill_worker_mid_job(cluster: Cluster, assets: AssetServer) -> None:
    api = cluster.api()
    slow = {"LIPSYNC_TEST_FAKE_SECONDS": "4", "LIPSYNC_TEST_FAKE_STEPS": "40"}
    cluster.worker(**slow)
    cluster.worker(**slow)
    hook = f"hook/{cluster.ns}"
    with api.client() as c:
        job_id = c.post("/jobs", json=job_body(assets, hook)).json()["job_id"]
    wait_running(api, job_id)
    first = cluster.owner(job_id)
    cluster.by_id(first).kill()
    killed = time.monotonic()
    job = api.wait_final(job_id, timeout=120)
    assert time.monotonic() - killed < 120
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert cluster.owner(job_id) not in ("", first)
    hooks = wait_until(lambda: hooks_by_job(assets, hook), 10, "the webhook")
    assert [h["status"] for h in hooks[job_id]] == ["succeeded"]


def test_cancel_reaches_the_running_worker(cluster: Cluster, assets: AssetServer) -> None:
    api = cluster.api()
    worker = cluster.worker(LIPSYNC_TEST_FAKE_SECONDS="60", LIPSYNC_TEST_FAKE_STEPS="600")
    hook = f"hook/{cluster.ns}"
    with api.client() as c:
        job_id = c.post("/jobs", json=job_body(assets, hook)).json()["job_id"]
        wait_running(api, job_id)
        assert metric(scrape(worker.metrics_url), "lipsync_running_jobs") == 1
        sent = time.monotonic()
        assert c.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
        wait_until(lambda: metric(scrape(worker.metrics_url), "lipsync_running_jobs") == 0, 5, "the worker to stop")
        assert time.monotonic() - sent < 2.0
        time.sleep(0.5)
        job = c.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
    wait_until(lambda: hooks_by_job(assets, hook), 10, "the webhook")
    time.sleep(0.5)
    assert [h["status"] for h in hooks_by_job(assets, hook)[job_id]] == ["cancelled"]
    assert metric(scrape(api.url + "/metrics"), "lipsync_jobs_total", status="cancelled") == 1
    assert metric(scrape(worker.metrics_url), "lipsync_jobs_total") == 0  # the API made that transition


def test_poison_job_fails_worker_lost(cluster: Cluster, assets: AssetServer, media: Media) -> None:
    api = cluster.api()
    env = {"LIPSYNC_TEST_POISON_SIZE": str(media.no_face_video.stat().st_size)}
    workers = [cluster.worker(**env) for _ in range(4)]
    hook = f"hook/{cluster.ns}"
    with api.client() as c:
        job_id = c.post("/jobs", json=job_body(assets, hook, video="poison.mp4")).json()["job_id"]
        job = api.wait_final(job_id, timeout=120)
        assert job["status"] == "failed" and job["error"]["code"] == "worker_lost", job
        assert job["attempts"] == 3
        assert sum(w.alive() for w in workers) == 1  # it killed three, the fourth refused it
        # The survivor still works.
        ok = api.wait_final(c.post("/jobs", json=job_body(assets)).json()["job_id"], timeout=60)
        assert ok["status"] == "succeeded"
    hooks = wait_until(lambda: hooks_by_job(assets, hook), 10, "the webhook")
    assert [h["error"]["code"] for h in hooks[job_id]] == ["worker_lost"]


@pytest.mark.parametrize("grace", ["0", "60"], ids=["requeued", "finished"])
def test_sigterm_never_drops_the_job(cluster: Cluster, assets: AssetServer, grace: str) -> None:
    api = cluster.api()
    env = {"LIPSYNC_TEST_FAKE_SECONDS": "3", "LIPSYNC_TEST_FAKE_STEPS": "30", "LIPSYNC_WORKER_STOP_GRACE_S": grace}
    cluster.worker(**env)
    cluster.worker(**env)
    with api.client() as c:
        job_id = c.post("/jobs", json=job_body(assets)).json()["job_id"]
    wait_running(api, job_id)
    first = cluster.owner(job_id)
    assert cluster.by_id(first).stop(signal.SIGTERM, timeout=30) == 0
    job = api.wait_final(job_id, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job  # a requeue refunds the attempt
    if grace == "0":
        assert cluster.owner(job_id) != first  # interrupted, requeued, finished by the other worker
    else:
        assert cluster.owner(job_id) == first  # finished within the grace period before the worker left


def test_queue_limit_holds_across_api_nodes(cluster: Cluster, assets: AssetServer) -> None:
    nodes = [cluster.api(LIPSYNC_QUEUE_SIZE="5", LIPSYNC_RESULTS_URL="") for _ in range(2)]
    body = {**job_body(assets), "upload_url": assets.url(f"put/{cluster.ns}.mp4")}

    def submit(i: int) -> int:
        with nodes[i % 2].client() as c:
            return c.post("/jobs", json=body).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = Counter(pool.map(submit, range(12)))
    assert codes == {202: 5, 429: 7}
    with nodes[0].client() as c:
        # Without a shared results store a job must name its upload_url.
        refused = c.post("/jobs", json=job_body(assets))
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_results_store"
        assert c.get("/health").json()["queue_depth"] == 5
    cluster.worker(LIPSYNC_RESULTS_URL="")
    with nodes[1].client() as c:
        wait_until(lambda: c.get("/health").json()["queue_depth"] == 0, 60, "the queue to drain")


def test_redis_crash_loses_no_job(assets: AssetServer, tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as srv:
        cluster = Cluster(srv.url, tmp_path)
        try:
            api = cluster.api()
            hook = f"hook/{cluster.ns}"
            with api.client() as c:
                queued = [c.post("/jobs", json=job_body(assets, hook)).json()["job_id"] for _ in range(10)]
                srv.restart(signal.SIGKILL)  # a crash: only the AOF survives
                assert all(c.get(f"/jobs/{i}").json()["status"] == "queued" for i in queued)
                cluster.worker(LIPSYNC_TEST_FAKE_SECONDS="0.3")
                cluster.worker(LIPSYNC_TEST_FAKE_SECONDS="0.3")
                more = [c.post("/jobs", json=job_body(assets, hook)).json()["job_id"] for _ in range(10)]
                time.sleep(0.5)
                srv.restart(signal.SIGKILL)  # again, while the workers run jobs
                jobs = [api.wait_final(i, timeout=120) for i in queued + more]
            assert Counter(j["status"] for j in jobs) == {"succeeded": 20}, [j["error"] for j in jobs]
            hooks = wait_until(lambda: (h := hooks_by_job(assets, hook)) and len(h) == 20 and h, 30, "20 webhooks")
            assert all(len(v) == 1 for v in hooks.values())
        finally:
            cluster.close()


def test_upload_job_through_s3_results_store(server: RedisServer, assets: AssetServer, media: Media,
                                             tmp_path: Path) -> None:
    with moto_s3("shared") as (s3, endpoint):
        cluster = Cluster(server.url, tmp_path, extra={
            "LIPSYNC_RESULTS_URL": "s3://shared/lipsync", "LIPSYNC_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
        try:
            api = cluster.api()
            cluster.worker()
            with api.client() as c:
                files = {"video": ("talk.mp4", media.video.read_bytes(), "video/mp4"),
                         "audio": ("speech.wav", media.audio.read_bytes(), "audio/wav")}
                resp = c.post("/lipsync/upload", files=files, data={"options": json.dumps({"async": True})})
                assert resp.status_code == 202, resp.text
                job_id = resp.json()["job_id"]
                job = api.wait_final(job_id, timeout=60)
                assert job["status"] == "succeeded", job
                got = c.get(f"/jobs/{job_id}/result")
                assert got.status_code == 200 and got.content == media.video.read_bytes()
                # The uploaded inputs are removed once the job's outcome is recorded.
                wait_until(lambda: [o["Key"] for o in s3.list_objects_v2(Bucket="shared").get("Contents", [])]
                           == [f"lipsync/{job_id}.mp4"], 10, "only the result left in the bucket")
                assert c.delete(f"/jobs/{job_id}").status_code == 200
                assert c.get(f"/jobs/{job_id}/result").status_code == 404
        finally:
            cluster.close()


def test_worker_cli_refuses_bad_setup(tmp_path: Path) -> None:
    import subprocess
    import sys

    from api_fixtures import REPO

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    run = [sys.executable, "-c", "from lipsync.cli import main; main()"]
    no_redis = subprocess.run([*run, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert no_redis.returncode == 2 and "LIPSYNC_REDIS_URL" in no_redis.stderr, no_redis.stderr
    bad = subprocess.run([*run, "worker", "--device", "gpu0"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--device" in bad.stderr and "Traceback" not in bad.stderr
    serve = subprocess.run([*run, "serve", "--no-workers"], env=env, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "LIPSYNC_REDIS_URL" in serve.stderr



def test_serve_runs_workers_in_process_by_default(cluster: Cluster, assets: AssetServer, media: Media) -> None:
    """`lipsync serve` in Redis mode without --no-workers: its own threads consume the cluster's queue."""
    api = cluster.api(LIPSYNC_RUN_WORKERS="true", LIPSYNC_WORKERS="2")
    with api.client() as c:
        resp = c.post("/lipsync", json=job_body(assets))  # synchronous: answered when the job is final
        assert resp.status_code == 200 and resp.json()["status"] == "succeeded", resp.text
        # Uploaded files reach the workers through the results store: without one, refused up front.
        files = {"video": ("v.mp4", media.video.read_bytes(), "video/mp4"),
                 "audio": ("a.wav", media.audio.read_bytes(), "audio/wav")}
        no_store = cluster.api(LIPSYNC_RESULTS_URL="")
        with no_store.client() as c2:
            refused = c2.post("/lipsync/upload", files=files,
                              data={"options": json.dumps({"upload_url": assets.url("put/x.mp4")})})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_results_store", refused.text
        assert list((no_store.work_dir / "tmp").iterdir()) == []  # the received files were removed
        s = scrape(api.url + "/metrics")
    assert metric(s, "lipsync_jobs_total", status="succeeded") == 1
    assert metric(s, "lipsync_workers_alive") == 1
    assert metric(s, "lipsync_model_state", state="ready") == 1
