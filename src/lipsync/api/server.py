"""Running the app under uvicorn with the connection limits an exposed server needs.

uvicorn on its own holds a connection that sends its header lines slowly for as long as the client
likes: its keep-alive timer only starts after a first response. ``HeaderTimeoutH11Protocol`` gives every
request ``header_timeout_s`` from its first byte (or from the connection's opening) to complete its
request line and headers, then closes the connection. With ``limit_concurrency`` (requests beyond it get
503) and ``timeout_keep_alive`` (idle connections closed), no number of slow or idle clients can hold
the server. The body's own pace is bounded by the request gate (api/gate.py).

When the gate refuses a body it has not read (401 before the body, 413 past the limit), closing at once
would make the kernel answer the client's next bytes with a reset, which on most systems destroys the
refusal in the client's receive buffer before it reads it. So such a connection lingers: the response is
flushed and the write side shut (FIN), reading stops (the client's sends block instead of streaming on),
and the socket is closed ``LINGER_S`` later. This is what nginx calls a lingering close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lipsync.config import Settings

log = logging.getLogger(__name__)

LINGER_S = 2.0


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close()`` lingers when the request body is unread."""

    def __init__(self, transport: asyncio.Transport, protocol: HeaderTimeoutH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        if self._protocol.conn.their_state is h11.SEND_BODY and self._transport.can_write_eof():
            self.lingering = True
            self._transport.write_eof()  # after the response is flushed
            self._transport.pause_reading()
            self._protocol.loop.call_later(LINGER_S, self._transport.close)
            return
        self._transport.close()

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def resume_reading(self) -> None:
        if not self.lingering:
            self._transport.resume_reading()


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering = _LingeringTransport(transport, self)
        super().connection_made(self._lingering)  # type: ignore[arg-type]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering.lingering:
            return  # the rest of a refused body: dropped
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # a new request on a kept-alive connection starts its clock
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closing a connection whose request headers took over %.1f s", self.header_timeout_s)
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[H11Protocol]:
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(seconds)})


def uvicorn_config(app: Any, settings: Settings, *, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``lipsync serve`` (tests run the fake-engine app through it too)."""
    return uvicorn.Config(
        app, host=host, port=port,
        http=protocol_with_header_timeout(settings.http_header_timeout_s),
        limit_concurrency=settings.http_max_connections,
        timeout_keep_alive=settings.http_keep_alive_s,
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
        timeout_graceful_shutdown=15,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the process's own logging setup
        **extra,
    )


def serve(app: Any, settings: Settings, *, host: str, port: int) -> None:
    # One process: the worker pool and the job store live in it.
    uvicorn.Server(uvicorn_config(app, settings, host=host, port=port)).run()
