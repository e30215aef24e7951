"""A generic staged pipe: stages on their own threads, joined by bounded queues.

Each stage is a function from an iterator of inputs to an iterator of outputs (a generator, so a stage
may keep state, batch, or look ahead), run on its own thread. The first stage is given an empty input and
is the source; the caller's thread runs the sink over the last stage's output. Between two stages sits a
:class:`Pipe`, a queue of ``depth`` items:

* end-of-stream travels down the pipe after a stage's last item;
* backpressure travels up: a stage blocks while its output pipe is full;
* the first error in any stage (or in the sink, e.g. a progress callback raising JobCancelled) stops the
  run: it is kept, every blocked put or get wakes within ``POLL_S`` and unwinds its stage (closing what it
  opened), all threads are joined, and the error itself is raised to the caller, same type and message.

Order is preserved because every stage is one thread reading its pipe in order. Threads suit the work here:
PyAV, OpenCV, numpy and torch release the GIL in their heavy calls.

:class:`FrameBudget` bounds the decoded pictures alive across all stages by bytes, so memory stays flat
whatever the length of the video and the number of stages.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a blocked stage looks whether the run was stopped

_EOS = object()


class Stopped(Exception):
    """Raised inside a stage when another part of the run failed; never reaches the caller."""


class RunState:
    """What every stage of one run shares: the stop flag and the first error."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None and not isinstance(exc, Stopped):
                self.error = exc
        self.stop.set()

    def check(self) -> None:
        if self.stop.is_set():
            raise Stopped


class Pipe:
    """A bounded queue between two stages; put and get wake up when the run stops."""

    def __init__(self, state: RunState, depth: int) -> None:
        self.state = state
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))

    def put(self, item: Any) -> None:
        while True:
            self.state.check()
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def get(self, idle: Callable[[], None] | None = None) -> Any:
        while True:
            self.state.check()
            try:
                return self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if idle is not None:
                    idle()

    def close(self) -> None:
        self.put(_EOS)

    def items(self, idle: Callable[[], None] | None = None) -> Iterator[Any]:
        while (item := self.get(idle)) is not _EOS:
            yield item


class FrameBudget:
    """Bytes of decoded pictures that may be alive at once across the stages of a run. The stage that
    makes pictures takes from it, the one that lets go of them (the encoder) gives back."""

    def __init__(self, state: RunState, capacity: int) -> None:
        self.state = state
        self.capacity = max(1, int(capacity))
        self.free = self.capacity
        self._cond = threading.Condition()

    def take(self, nbytes: int) -> int:
        # A request larger than the whole budget waits for all of it (one oversized item at a time).
        nbytes = min(int(nbytes), self.capacity)
        with self._cond:
            while self.free < nbytes:
                self.state.check()
                self._cond.wait(POLL_S)
            self.free -= nbytes
        return nbytes

    def give(self, nbytes: int) -> None:
        with self._cond:
            self.free = min(self.capacity, self.free + int(nbytes))
            self._cond.notify_all()


StageFn = Callable[[Iterator[Any]], Iterable[Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    depth: int = 2  # items its output pipe holds


def run_stages(
    stages: Sequence[Stage],
    sink: Callable[[Iterator[Any]], None],
    *,
    state: RunState | None = None,
    idle: Callable[[], None] | None = None,
) -> None:
    """Run ``stages`` concurrently and ``sink`` on this thread over the last one's output. ``idle`` is
    called on this thread while the sink waits (at most every POLL_S), e.g. to report progress or notice
    a cancellation. Returns when everything finished; raises the first error of any part."""
    state = state or RunState()
    pipes = [Pipe(state, s.depth) for s in stages]
    threads: list[threading.Thread] = []

    def work(k: int) -> None:
        inbox = pipes[k - 1].items() if k else iter(())
        outputs: Iterable[Any] = ()
        try:
            outputs = stages[k].run(inbox)
            for item in outputs:
                pipes[k].put(item)
            pipes[k].close()
        except BaseException as exc:  # kept for the caller, who raises it
            state.fail(exc)
        finally:
            close = getattr(outputs, "close", None)
            if close is not None:
                try:
                    close()  # a generator stage unwinds here: its with-blocks close their files
                except BaseException as exc:
                    state.fail(exc)

    for k, stage in enumerate(stages):
        thread = threading.Thread(target=work, args=(k,), name=f"lipsync-{stage.name}", daemon=True)
        threads.append(thread)
        thread.start()
    try:
        sink(pipes[-1].items(idle))
    except BaseException as exc:
        state.fail(exc)
    finally:
        # After the sink: a stage still running (one whose output was not read to the end) is not needed.
        state.stop.set()
        for thread in threads:
            thread.join()
    if state.error is not None:
        raise state.error
