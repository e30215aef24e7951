"""The generic staged pipe (lipsync.render.engine): order, backpressure, errors, cancellation, budget."""

from __future__ import annotations

import random
import threading
import time

import pytest

from lipsync.errors import EncodeError, JobCancelled, MediaError
from lipsync.render.engine import FrameBudget, RunState, Stage, run_stages


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("lipsync-")}


def _source(n: int, delay=None):
    def run(_inbox):
        for i in range(n):
            if delay:
                time.sleep(delay())
            yield i

    return run


def _map(fn, delay=None):
    def run(inbox):
        for item in inbox:
            if delay:
                time.sleep(delay())
            yield fn(item)

    return run


def test_order_holds_under_random_per_stage_delays():
    rng = random.Random(7)
    lock = threading.Lock()

    def jitter():
        with lock:
            return rng.random() * 0.004

    stages = [Stage("src", _source(300, jitter), 2)] + [
        Stage(f"s{k}", _map(lambda x: x, jitter), depth) for k, depth in enumerate((1, 3, 2))
    ]
    out: list[int] = []

    def sink(items):
        for item in items:
            time.sleep(jitter())
            out.append(item)

    run_stages(stages, sink)
    assert out == list(range(300))
    assert not _threads()


def test_backpressure_bounds_what_is_in_flight():
    made = []

    def src(_inbox):
        for i in range(50):
            made.append(i)
            yield i

    seen = []

    def sink(items):
        for item in items:
            # Pipes of depth 1 and 1 plus the items held by the two threads: at most 4 ahead of the sink.
            assert len(made) - len(seen) <= 5
            time.sleep(0.002)
            seen.append(item)

    run_stages([Stage("src", src, 1), Stage("id", _map(lambda x: x), 1)], sink)
    assert seen == list(range(50))


@pytest.mark.parametrize("where", ["src", "middle", "last", "sink"])
def test_an_error_in_any_part_surfaces_as_itself_and_stops_every_thread(where):
    error = EncodeError("boom in " + where) if where == "sink" else MediaError("bad frame in " + where)
    closed = []

    def failing(name):
        def run(inbox):
            try:
                for item in inbox:
                    if name == where and item == 20:
                        raise error
                    yield item
            finally:
                closed.append(name)

        return run

    def src(_inbox):
        try:
            for i in range(10**9):  # endless: only the error can end this run
                if where == "src" and i == 20:
                    raise error
                yield i
        finally:
            closed.append("src")

    def sink(items):
        for item in items:
            if where == "sink" and item == 20:
                raise error

    start = time.monotonic()
    with pytest.raises(type(error)) as info:
        run_stages([Stage("src", src), Stage("middle", failing("middle")), Stage("last", failing("last"))], sink)
    assert info.value is error
    assert time.monotonic() - start < 1.0
    assert sorted(closed) == ["last", "middle", "src"]  # every stage unwound (its finally ran)
    assert not _threads()


def test_cancellation_from_the_sink_stops_a_busy_run_within_a_second():
    def slow(inbox):
        for item in inbox:
            time.sleep(0.01)
            yield item

    t_cancel = []

    def idle_cancel():
        if t_cancel:
            raise JobCancelled("cancelled")

    def sink(items):
        for item in items:
            if item == 30:
                t_cancel.append(time.monotonic())
                raise JobCancelled("cancelled by the user")

    with pytest.raises(JobCancelled):
        run_stages([Stage("src", _source(10**9)), Stage("slow", slow)], sink, idle=idle_cancel)
    assert time.monotonic() - t_cancel[0] < 1.0
    assert not _threads()


def test_a_stage_blocked_upstream_is_woken_when_the_sink_stops_early():
    def sink(items):
        for item in items:
            if item == 3:
                return  # stops reading: the source is blocked on a full pipe

    run_stages([Stage("src", _source(10**9), 1)], sink)
    assert not _threads()


def test_frame_budget_blocks_until_given_back_and_wakes_on_stop():
    state = RunState()
    budget = FrameBudget(state, 100)
    assert budget.take(60) == 60
    got = []
    thread = threading.Thread(target=lambda: got.append(budget.take(60)))
    thread.start()
    time.sleep(0.1)
    assert not got  # 40 free, 60 asked
    budget.give(60)
    thread.join(1)
    assert got == [60]
    budget.give(60)
    assert budget.take(10**6) == 100  # an oversized request waits for (and takes) the whole budget
    stopper = threading.Thread(target=lambda: state.fail(JobCancelled("stop")))
    errors = []

    def blocked():
        try:
            budget.take(50)
        except Exception as exc:  # Stopped
            errors.append(type(exc).__name__)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    time.sleep(0.1)
    stopper.start()
    waiter.join(1)
    assert errors == ["Stopped"]
