"""API latency under concurrency: GET /health and job submission (POST /jobs) with 50 concurrent clients.

A real uvicorn process on loopback runs the app with the fast fake engine (tests/api_fixtures.py), so
this measures the service (validation, SSRF check, SQLite, queue), not the models. Jobs submitted are
really run by the workers in the background (downloads from a local asset server), as in production.

    .venv/bin/python benchmarks/api.py [--quick] [--clients 50] [--requests 20]

Prints a table and writes benchmarks/results/api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from api_fixtures import ApiServer, AssetServer, make_media  # noqa: E402

API_KEY = "bench-key"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def _run(url: str, clients: int, per_client: int, method: str, path: str, body: dict | None,
               expect: int) -> dict:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60, trust_env=False) as ac:
        async def client() -> None:
            nonlocal errors
            for _ in range(per_client):
                t0 = time.perf_counter()
                resp = await ac.request(method, path, json=body)
                latencies.append((time.perf_counter() - t0) * 1000)
                if resp.status_code != expect:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {
        "endpoint": f"{method} {path}",
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(_pct(latencies, 50), 2),
        "p95_ms": round(_pct(latencies, 95), 2),
        "p99_ms": round(_pct(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "max_ms": round(max(latencies), 2),
        "throughput_rps": round(len(latencies) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per client (5)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    args = parser.parse_args()
    per_client = 5 if args.quick else args.requests

    with tempfile.TemporaryDirectory(prefix="lipsync-bench-api-") as tmp:
        tmpdir = Path(tmp)
        media = make_media(tmpdir / "media")
        with AssetServer() as assets:
            body = {
                "video_url": assets.add_file("v.mp4", media.video, "video/mp4"),
                "audio_url": assets.add_file("a.wav", media.audio, "audio/wav"),
                "characters": [{"id": "s", "name": "S",
                                "reference_image_url": assets.add_file("r.jpg", media.reference, "image/jpeg")}],
            }
            env = {
                "LIPSYNC_ALLOW_PRIVATE_URLS": "true",
                "LIPSYNC_QUEUE_SIZE": str(args.clients * per_client + 200),
                "LIPSYNC_WORKERS": "2",
                "LIPSYNC_TEST_FAKE_SECONDS": "0.01",
                "LOG_LEVEL": "WARNING",
            }
            with ApiServer(env=env, work_dir=tmpdir / "work", api_key=API_KEY) as server:
                baseline_n = 20 if args.quick else 100
                rows = [
                    # one client first: the service's own cost, without queueing for the CPU
                    asyncio.run(_run(server.url, 1, baseline_n, "GET", "/health", None, 200)),
                    asyncio.run(_run(server.url, 1, baseline_n, "POST", "/jobs", body, 202)),
                    asyncio.run(_run(server.url, args.clients, per_client, "GET", "/health", None, 200)),
                    asyncio.run(_run(server.url, args.clients, per_client, "POST", "/jobs", body, 202)),
                ]
                # Let the background jobs finish so the server stops cleanly.
                drain_start = time.perf_counter()
                with server.client() as c:
                    while c.get("/health").json()["queue_depth"] and time.perf_counter() - drain_start < 300:
                        time.sleep(0.2)
                drained = time.perf_counter() - drain_start

    load = os.getloadavg()[0]
    print(f"\nAPI latency, 1 and {args.clients} concurrent clients (fake engine, loopback, "
          f"{os.cpu_count()} CPUs, load average {load:.1f})")
    header = f"{'endpoint':<14} {'clients':>7} {'reqs':>5} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['endpoint']:<14} {r['clients']:>7} {r['requests']:>5} {r['errors']:>4} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['throughput_rps']:>7.1f}")
    print(f"(the {rows[1]['requests'] + rows[3]['requests']} submitted jobs drained in {drained:.1f} s with 2 workers)")

    out = ROOT / "benchmarks" / "results" / "api.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "api",
        "quick": args.quick,
        "clients": args.clients,
        "requests_per_client": per_client,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_1m": round(load, 2)},
        "results": rows,
        "jobs_drain_seconds": round(drained, 2),
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
