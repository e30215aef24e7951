"""The distributed queue's cost: jobs per second through Redis (Dramatiq) with 1 and 3 worker processes,
and the per-job latency the queue adds compared with embedded mode (SQLite + threads).

Everything is real but the models: a uvicorn API on loopback, a real redis-server (AOF, fsync always),
worker processes (`run_worker`, the code behind `lipsync worker`) on the fast fake engine
(tests/api_fixtures.py: it probes its inputs and copies the video), inputs from a local asset server.

* throughput: N jobs submitted at once (POST /jobs), time until the last is final;
* latency: one job at a time through POST /lipsync (waits for the result), end to end, and the record's
  own created->started (queue wait) time.

    .venv/bin/python benchmarks/queue_throughput.py [--quick] [--jobs 100]

Prints a table and writes benchmarks/results/queue.json.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and its name would shadow the standard
# library's `queue` (concurrent.futures and httpx import it): drop that folder before anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from api_fixtures import ApiServer, AssetServer, make_media  # noqa: E402
from redis_fixtures import FAST_CLUSTER_ENV, RedisServer, WorkerProcess  # noqa: E402


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _throughput(api: ApiServer, body: dict, n: int) -> dict:
    with api.client() as c:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: c.post("/jobs", json=body).json()["job_id"], range(n)))
        submitted = time.perf_counter() - start
        jobs = [api.wait_final(i, timeout=600) for i in ids]
        wall = time.perf_counter() - start
    ok = sum(j["status"] == "succeeded" for j in jobs)
    return {"jobs": n, "succeeded": ok, "wall_s": round(wall, 3), "submit_s": round(submitted, 3),
            "jobs_per_s": round(n / wall, 2)}


def _latency(api: ApiServer, body: dict, n: int) -> dict:
    e2e, waits = [], []
    with api.client() as c:
        for _ in range(n):
            t0 = time.perf_counter()
            resp = c.post("/lipsync", json=body)
            e2e.append((time.perf_counter() - t0) * 1000)
            job = c.get(f"/jobs/{resp.json()['job_id']}").json()
            waits.append((_ts(job["started_at"]) - _ts(job["created_at"])) * 1000)
    return {"latency_samples": n, "e2e_p50_ms": round(statistics.median(e2e), 1), "e2e_mean_ms": round(statistics.fmean(e2e), 1),
            "queue_wait_p50_ms": round(statistics.median(waits), 1),
            "queue_wait_mean_ms": round(statistics.fmean(waits), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 jobs, 10 latency samples")
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    n = 30 if args.quick else args.jobs
    samples = 10 if args.quick else 30
    rows: list[dict] = []
    base = {"LIPSYNC_ALLOW_PRIVATE_URLS": "true", "LIPSYNC_QUEUE_SIZE": str(n + 50),
            "LIPSYNC_TEST_FAKE_SECONDS": "0", "LOG_LEVEL": "WARNING"}

    with tempfile.TemporaryDirectory(prefix="lipsync-bench-queue-") as tmp:
        tmpdir = Path(tmp)
        media = make_media(tmpdir / "media", seconds=0.5)
        with AssetServer() as assets:
            body = {"video_url": assets.add_file("v.mp4", media.video, "video/mp4"),
                    "audio_url": assets.add_file("a.wav", media.audio, "audio/wav")}
            for threads in (1, 3):
                env = {**base, "LIPSYNC_WORKERS": str(threads)}
                with ApiServer(env=env, work_dir=tmpdir / f"embedded{threads}") as api:
                    rows.append({"mode": "embedded", "workers": threads, **_throughput(api, body, n),
                                 **(_latency(api, body, samples) if threads == 1 else {})})
            with RedisServer(tmpdir / "redis") as redis_srv:
                for count in (1, 3):
                    env = {**base, **FAST_CLUSTER_ENV, "LIPSYNC_REDIS_URL": redis_srv.url,
                           "LIPSYNC_REDIS_NAMESPACE": uuid.uuid4().hex[:8],
                           "LIPSYNC_RESULTS_URL": str(tmpdir / f"shared{count}"),
                           # Production-like maintenance: crash recovery is not what is measured here.
                           "LIPSYNC_MAINTENANCE_CHANCE": "0.1", "LIPSYNC_HEARTBEAT_TIMEOUT_S": "30"}
                    workers = [WorkerProcess(env=env, work_dir=tmpdir / f"w{count}", worker_id=f"w{count}-{i}")
                               .start() for i in range(count)]
                    try:
                        with ApiServer(env={**env, "LIPSYNC_RUN_WORKERS": "false"},
                                       work_dir=tmpdir / f"api{count}") as api:
                            rows.append({"mode": "redis", "workers": count, **_throughput(api, body, n),
                                         **(_latency(api, body, samples) if count == 1 else {})})
                    finally:
                        for w in workers:
                            w.stop()

    load = os.getloadavg()[0]
    print(f"\nJobs through the queue (fake engine, {os.cpu_count()} CPUs, load average {load:.1f})")
    header = (f"{'mode':<9} {'workers':>7} {'jobs':>5} {'ok':>4} {'wall s':>7} {'jobs/s':>7} "
              f"{'e2e p50 ms':>10} {'wait p50 ms':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        e2e = f"{r['e2e_p50_ms']:>10.1f}" if "e2e_p50_ms" in r else f"{'':>10}"
        wait = f"{r['queue_wait_p50_ms']:>11.1f}" if "queue_wait_p50_ms" in r else f"{'':>11}"
        print(f"{r['mode']:<9} {r['workers']:>7} {r['jobs']:>5} {r['succeeded']:>4} {r['wall_s']:>7.2f} "
              f"{r['jobs_per_s']:>7.2f} {e2e} {wait}")
    emb = next(r for r in rows if r["mode"] == "embedded" and "e2e_p50_ms" in r)
    red = next(r for r in rows if r["mode"] == "redis" and "e2e_p50_ms" in r)
    added = round(red["e2e_p50_ms"] - emb["e2e_p50_ms"], 1)
    print(f"latency the queue adds per job (p50, one job at a time): {added} ms")

    out = ROOT / "benchmarks" / "results" / "queue.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "queue", "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_1m": round(load, 2)},
        "results": rows, "added_latency_p50_ms": added,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
