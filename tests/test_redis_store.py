"""RedisJobStore's transitions on a real redis-server: the atomic steps the cluster's guarantees rest on."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from lipsync.errors import JobNotFound, QueueFull
from lipsync.jobs.models import JobFailure
from lipsync.jobs.redis_store import RedisJobStore, redis_client
from redis_fixtures import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server (apt-get install redis-server)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def store(server: RedisServer):
    s = RedisJobStore(redis_client(server.url), namespace=f"t-{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def test_create_get_and_unknown(store: RedisJobStore) -> None:
    rec = store.create("lipsync", {"video_url": "http://x/v.mp4", "options": {"fps": None}},
                       webhook_url="http://x/hook")
    got = store.get(rec.id)
    assert (got.status, got.kind, got.attempts, got.webhook_url) == ("queued", "lipsync", 0, "http://x/hook")
    assert got.params == {"video_url": "http://x/v.mp4", "options": {"fps": None}}
    assert store.count("queued") == 1
    with pytest.raises(JobNotFound) as err:
        store.get("nope")
    assert err.value.field == "job_id"


def test_queue_limit_is_atomic_across_clients(store: RedisJobStore, server: RedisServer) -> None:
    """20 threads with their own connections (as on several API nodes) race for 5 places."""
    results: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        other = RedisJobStore(redis_client(server.url), namespace=store.ns)
        try:
            other.create("lipsync", {}, max_queued=5)
            outcome = "ok"
        except QueueFull as exc:
            assert exc.http_status == 429
            outcome = "full"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 5 and results.count("full") == 15
    assert store.count("queued") == 5


def test_one_start_per_delivery_and_takeover(store: RedisJobStore) -> None:
    rec = store.create("lipsync", {})
    assert store.start(rec.id, "w1", lost_after=3).state == "started"
    store.heartbeat("w1", 30)
    store.heartbeat("w9", 0.05)
    time.sleep(0.1)
    assert store.workers_alive() == 1  # w9's beat is stale
    # A duplicate delivery while w1 is alive: deferred, not run twice.
    assert store.start(rec.id, "w2", lost_after=3).state == "busy"
    # w1 dies (its liveness key goes): w2 takes over, attempt 2; w1 can no longer report or finish.
    store.forget_worker("w1")
    outcome = store.start(rec.id, "w2", lost_after=3)
    assert (outcome.state, outcome.attempts) == ("started", 2)
    assert store.set_progress(rec.id, "w1", "lipsync", 1, 5) == "superseded"
    assert store.finish(rec.id, "succeeded", result={}, only_if=("running",), owner="w1") is None
    assert store.set_progress(rec.id, "w2", "lipsync", 2, 5) == "running"
    done = store.finish(rec.id, "succeeded", result={"x": 1}, only_if=("running",), owner="w2")
    assert done is not None and done.status == "succeeded" and done.result == {"x": 1}
    assert done.progress["lipsync"].done == 2
    # Final is final: a late redelivery finds nothing to run, a second finish changes nothing.
    assert store.start(rec.id, "w3", lost_after=3).state == "final"
    assert store.finish(rec.id, "failed", error=JobFailure("x", "y")) is None
    assert store.count("running") == 0 and store.count("queued") == 0
    assert store.workers_alive() == 0


def test_worker_lost_after_n_deaths(store: RedisJobStore) -> None:
    rec = store.create("lipsync", {}, webhook_url="http://x/hook")
    for n in range(1, 4):
        outcome = store.start(rec.id, f"w{n}", lost_after=3)
        assert (outcome.state, outcome.attempts) == ("started", n)  # each worker died without a heartbeat
    outcome = store.start(rec.id, "w4", lost_after=3)
    assert outcome.state == "lost"
    job = store.get(rec.id)
    assert job.status == "failed" and job.error is not None and job.error.code == "worker_lost"
    assert job.attempts == 3
    # Its webhook is pending and only one claimant gets it.
    assert store.claim_webhook(rec.id, "a") and not store.claim_webhook(rec.id, "b")
    store.webhook_done(rec.id, "delivered")
    assert not store.claim_webhook(rec.id, "c")


def test_requeue_refunds_the_attempt(store: RedisJobStore) -> None:
    rec = store.create("lipsync", {})
    store.start(rec.id, "w1", lost_after=3)
    assert not store.requeue(rec.id, "someone-else")
    assert store.requeue(rec.id, "w1")
    job = store.get(rec.id)
    assert (job.status, job.attempts, job.progress) == ("queued", 0, {})
    assert store.count("queued") == 1 and store.count("running") == 0


def test_cancel_publishes_to_the_worker(store: RedisJobStore) -> None:
    rec = store.create("lipsync", {})
    store.start(rec.id, "w1", lost_after=3)
    pubsub = store.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.channel)
    store.finish(rec.id, "cancelled", error=JobFailure("cancelled", "by request", 409))
    messages = []
    for _ in range(20):
        msg = pubsub.get_message(timeout=0.2)
        if msg:
            messages.append(msg["data"])
        if len(messages) == 2:
            break
    assert messages == [f"cancel {rec.id}", f"final {rec.id}"]
    assert store.set_progress(rec.id, "w1", "lipsync", 1, 2) == "cancelled"
    pubsub.close()


def test_results_dir_store(tmp_path: Path) -> None:
    from lipsync.jobs.results import DirResults, results_store_from_url

    store = results_store_from_url(f"file://{tmp_path}/shared")
    assert isinstance(store, DirResults)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"mp4" * 1000)
    store.put("job1", out)
    assert b"".join(store.open("job1")) == b"mp4" * 1000
    store.delete("job1")
    assert store.open("job1") is None and store.local_path("job1") is None


def test_results_s3_store_on_moto(tmp_path: Path) -> None:
    from api_fixtures import moto_s3
    from lipsync.jobs.results import S3Results

    with moto_s3("shared") as (s3, _endpoint):
        store = S3Results("shared", "lipsync/", client=s3)
        out = tmp_path / "out.mp4"
        out.write_bytes(b"\x00mp4" * 5000)
        store.put("job1", out)
        assert s3.head_object(Bucket="shared", Key="lipsync/job1.mp4")["ContentType"] == "video/mp4"
        assert b"".join(store.open("job1")) == b"\x00mp4" * 5000
        ins = [tmp_path / "video.mp4", tmp_path / "audio.wav"]
        for i, f in enumerate(ins):
            f.write_bytes(bytes([i]) * 10)
        store.put_inputs("job1", ins)
        assert store.fetch_inputs("job1", tmp_path / "dest") == ["audio.wav", "video.mp4"]
        assert (tmp_path / "dest" / "video.mp4").read_bytes() == b"\x00" * 10
        store.delete_inputs("job1")
        store.delete("job1")
        assert store.open("job1") is None and store.fetch_inputs("job1", tmp_path / "d2") == []


@pytest.mark.parametrize("url", ["s3://", "http://x/y", "relative/dir"])
def test_bad_results_url(url: str) -> None:
    from lipsync.errors import InputError
    from lipsync.jobs.results import results_store_from_url

    with pytest.raises(InputError) as err:
        results_store_from_url(url)
    assert err.value.field == "results_url"


def test_recent_jobs_newest_first_filtered_and_paged(store: RedisJobStore) -> None:
    """GET /jobs on a cluster: the same listing as the SQLite store's."""
    ids = []
    for _ in range(5):
        ids.append(store.create("lipsync", {"n": 1}).id)
        time.sleep(0.002)  # distinct creation times
    assert [r.id for r in store.recent(3)] == ids[::-1][:3]
    assert [r.id for r in store.recent(3, before=ids[2])] == [ids[1], ids[0]]
    store.finish(ids[3], "cancelled")
    assert [r.id for r in store.recent(10, status="cancelled")] == [ids[3]]
    store.r.delete(store.key(ids[4]))  # an expired record is skipped (and dropped from the index)
    assert store.recent(1)[0].id == ids[3]
    with pytest.raises(JobNotFound):
        store.recent(1, before="nope")
