"""Issue 13 units: body parsing (one invalid_json code), whole-match character ids, the webhook outbox
(every final state owes a webhook, crash recovery included; old databases migrated) and the retention sweep.
The same behaviours on real servers are in test_api_hardening.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lipsync.api.schemas import LipSyncIn
from lipsync.errors import JobNotFound
from lipsync.jobs import JobStore
from lipsync.jobs.models import MAX_ATTEMPTS


@pytest.mark.parametrize("body", [
    b"{not json", b'{"a": "\xff"}', b"[" * 40 + b"]" * 40, b'{"a":' * 33 + b"1" + b"}" * 33, b"[NaN]",
    b'["\\udc00"]', b"1" + b"0" * 5000, b"[" * 5000,
])
def test_parse_json_refuses_with_one_code(body: bytes) -> None:
    from lipsync.api.errors import InvalidJSON
    from lipsync.api.jsonbody import parse_json

    with pytest.raises(InvalidJSON) as exc:
        parse_json(body, what="options", field="options")
    assert exc.value.code == "invalid_json" and exc.value.field == "options"
    assert exc.value.message.startswith("options ")


def test_parse_json_accepts_what_clients_send() -> None:
    from lipsync.api.jsonbody import parse_json

    text = '{"characters": [{"id": "a", "name": "[[[[{{{{ \\" not brackets"}], "pads": [0, 20, 0, 0], "e": "\\ud83d\\ude00"}'
    assert parse_json(("\ufeff" + text).encode())["characters"][0]["id"] == "a"
    assert parse_json(b"[" * 32 + b"]" * 32) is not None


@pytest.mark.parametrize(("value", "ok"), [("speaker", True), ("speaker\n", False), ("a.b-c_d", True), ("..", False),
                                          ("-x", False), ("x" * 64, True), ("x" * 65, False), ("", False)])
def test_character_ids_match_whole(value: str, ok: bool) -> None:
    from lipsync.types import is_character_id

    assert is_character_id(value) is ok
    body = {"video_url": "http://93.184.215.14/v.mp4", "audio_url": "http://93.184.215.14/a.wav",
            "characters": [{"id": value, "reference_image_url": "http://93.184.215.14/r.jpg"}]}
    if ok:
        LipSyncIn.model_validate(body)
    else:
        with pytest.raises(ValueError):
            LipSyncIn.model_validate(body)


def test_store_outbox_owes_a_webhook_for_every_final_state(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    done = store.create("lipsync", {}, webhook_url="http://example.com/hook")
    quiet = store.create("lipsync", {})
    crashed = store.create("lipsync", {}, webhook_url="http://example.com/hook")
    for job in (done, quiet):
        store.mark_running(job.id)
        store.finish(job.id, "succeeded", result={})
    for _ in range(MAX_ATTEMPTS):  # interrupted on every attempt: recovery fails it
        store.mark_running(crashed.id)
        store.recover()
    assert store.get(crashed.id).status == "failed"
    assert [r.id for r in store.pending_webhooks()] == [done.id, crashed.id]
    assert store.webhook_status(quiet.id) is None
    assert store.claim_webhook(done.id) and not store.claim_webhook(done.id)  # one sender only
    store.recover()  # a stop mid-delivery: owed again
    assert store.webhook_status(done.id) == "pending"
    assert store.claim_webhook(done.id)
    store.settle_webhook(done.id, "delivered")
    assert [r.id for r in store.pending_webhooks()] == [crashed.id]
    store.close()


def test_store_adds_new_columns_to_an_old_database(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the schema before the webhook outbox
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL, status TEXT"
                   " NOT NULL, params TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at"
                   " REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, stage TEXT, progress TEXT NOT NULL"
                   " DEFAULT '{}', result TEXT, error TEXT, webhook_url TEXT)")
        db.execute("INSERT INTO jobs (id, seq, kind, status, params, created_at, updated_at, webhook_url)"
                   " VALUES ('old', 1, 'lipsync', 'running', '{}', 0, 0, 'http://example.com/h')")
    store = JobStore(path)
    store.finish("old", "failed")
    assert store.webhook_status("old") == "pending"
    store.close()


def test_retention_sweep(tmp_path: Path) -> None:
    import os

    from lipsync.jobs.retention import RetentionSweeper, SweepReport

    store = JobStore(tmp_path / "jobs.sqlite3")
    results = tmp_path / "results"
    results.mkdir()
    old, recent, running = (store.create("lipsync", {}) for _ in range(3))
    for job in (old, recent):
        store.mark_running(job.id)
        store.finish(job.id, "succeeded", result={})
        (results / f"{job.id}.mp4").write_bytes(b"x")
    store.mark_running(running.id)
    now = time.time()
    os.utime(results / f"{old.id}.mp4", (now - 7200, now - 7200))
    sweeper = RetentionSweeper(store, results, result_ttl_s=3600, row_ttl_s=86400, interval_s=60)
    assert sweeper.sweep(now) == SweepReport(results_deleted=1, rows_deleted=0)  # the old result only
    assert sorted(p.stem for p in results.glob("*.mp4")) == [recent.id]
    report = sweeper.sweep(now + 2 * 86400)  # past the row TTL: finished rows and their results go
    assert (report.rows_deleted, report.results_deleted) == (2, 1)
    assert store.get(running.id).status == "running"  # never a job still going
    with pytest.raises(JobNotFound):
        store.get(old.id)
    store.close()
