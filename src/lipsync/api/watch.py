"""Deadlines and cancellation that hold whatever pace the peer sends or reads at.

A per-read timeout does not bound a transfer: a server sending one byte every 0.5 s never trips a 3 s
read timeout, and a loop that checks its deadline once per 64 KiB never gets to check it. So the
guarded transport (api/netguard.py) wraps every connection of a watched transfer in ``WatchedStream``:
each read and write waits in short slices and, between slices, asks the ``TransferWatch`` whether the
transfer must stop (the job was cancelled, the server is stopping) or is out of time. The error the
watch raises (FetchTimeout, UploadTimeout, JobCancelled...) comes out of httpx unchanged.
"""

from __future__ import annotations

import socket
import ssl
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

import httpcore

# How often a blocked read or write wakes up to look at the watch: the latency of a cancel.
SLICE_S = 0.2


@dataclass(frozen=True)
class TransferWatch:
    deadline: float  # time.monotonic() value
    expired: Callable[[], Exception]  # builds the error raised at the deadline
    check_stop: Callable[[], None] | None = None  # raises to abandon the transfer (cancellation)

    @classmethod
    def within(cls, seconds: float, expired: Callable[[], Exception],
               check_stop: Callable[[], None] | None = None) -> TransferWatch:
        return cls(time.monotonic() + seconds, expired, check_stop)

    def check(self) -> None:
        if self.check_stop is not None:
            self.check_stop()
        if time.monotonic() >= self.deadline:
            raise self.expired()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def cap(self, timeout: float | None) -> float:
        """A blocking call's timeout, never past the deadline (at least a moment, so it can fail cleanly)."""
        left = max(self.remaining(), 0.001)
        return left if timeout is None else min(timeout, left)

    def sleep(self, seconds: float) -> None:
        """time.sleep that still notices a cancel or the deadline."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            time.sleep(min(left, SLICE_S))
        self.check()


class WatchedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, watch: TransferWatch) -> None:
        self._inner = inner
        self._watch = watch

    def _slices(self, timeout: float | None) -> typing.Iterator[float]:
        """Slice lengths until ``timeout`` (the per-operation limit) is used up; checks the watch each time."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            self._watch.check()
            step = min(SLICE_S, self._watch.remaining() or 0.001)
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                step = min(step, left)
            yield max(step, 0.001)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        for step in self._slices(timeout):
            try:
                return self._inner.read(max_bytes, step)
            except httpcore.ReadTimeout:
                continue  # nothing was consumed: wait again
        raise httpcore.ReadTimeout(f"no data for {timeout:g} s")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        sock = self._inner.get_extra_info("socket")
        if not isinstance(sock, socket.socket):  # pragma: no cover - TLS in TLS (proxies) is not used
            self._watch.check()
            self._inner.write(buffer, self._watch.cap(timeout))
            return
        # httpcore's own write loops over send() inside one timeout; a slice that times out there would
        # lose track of what was sent. Here each send() reports its count, and a timed-out send sent nothing.
        view = memoryview(buffer)
        while view:
            for step in self._slices(timeout):
                try:
                    sock.settimeout(step)
                    sent = sock.send(view)
                    break
                except (TimeoutError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    continue
                except OSError as exc:
                    raise httpcore.WriteError(str(exc)) from exc
            else:
                raise httpcore.WriteTimeout(f"could not send for {timeout:g} s")
            view = view[sent:]

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        self._watch.check()
        return WatchedStream(self._inner.start_tls(ssl_context, server_hostname, self._watch.cap(timeout)),
                             self._watch)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)
