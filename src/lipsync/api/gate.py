"""The request gate: an ASGI middleware in front of every route that decides from the headers, and
then from the byte stream itself, before any handler or body parser sees the request.

1. Auth first: a request without a valid key (when one is set) gets 401 before a byte of its body is
   read, so an unauthenticated client cannot make the server buffer anything.
2. Size on the stream: a declared Content-Length over the route's limit is 413 at once; otherwise the
   bytes are counted as they arrive (chunked bodies have no length to check) and the 413 goes out the
   moment the count passes the limit. The handler is then told the client went away and its own
   answer is dropped.
3. Time on the stream: a body that stalls (no bytes for ``idle_timeout_s``) or takes longer than the
   route's ``total_timeout_s`` in all gets 408: a client trickling one byte at a time cannot hold a
   connection and a task for ever.

Early answers carry ``Connection: close``: the server stops reading the rest of a refused body instead
of draining it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lipsync.api.auth import ApiKeyCheck
from lipsync.api.errors import error_response
from lipsync.api.fetch import human_size


@dataclass(frozen=True)
class BodyRule:
    max_bytes: int
    idle_timeout_s: float
    total_timeout_s: float | None = None  # None: only the idle timeout applies


class RequestGate:
    def __init__(self, app: ASGIApp, *, auth: ApiKeyCheck, is_public: Callable[[str], bool],
                 rule_for: Callable[[str], BodyRule]) -> None:
        self.app = app
        self.auth = auth
        self.is_public = is_public
        self.rule_for = rule_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = Headers(scope=scope)
        if not self.is_public(path):
            problem = self.auth.problem(headers.get("authorization"))
            if problem:
                await _answer(scope, send, 401, "unauthorized", problem, {"WWW-Authenticate": "Bearer"})
                return
        rule = self.rule_for(path)
        length = headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > rule.max_bytes:
            await _answer(scope, send, 413, "request_too_large",
                          f"the request body ({human_size(int(length))}) is over the {human_size(rule.max_bytes)}"
                          f" limit of {path}")
            return
        stream = _GuardedStream(rule, scope, receive, send)
        await self.app(scope, stream.receive, stream.send)


class _GuardedStream:
    """The receive/send pair the app gets: counts and times the body, answers early when it must."""

    def __init__(self, rule: BodyRule, scope: Scope, receive: Receive, send: Send) -> None:
        self.rule = rule
        self.scope = scope
        self.path = scope["path"]
        self._receive = receive
        self._send = send
        self.total = 0
        self.body_done = False
        self.started = False  # the response has begun (ours or the app's)
        self.refused = False  # we answered; the app's own answer is dropped
        self.deadline = (time.monotonic() + rule.total_timeout_s) if rule.total_timeout_s else None

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:  # after the body: disconnect listeners wait as long as they like
            return await self._receive()
        wait = self.rule.idle_timeout_s
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(wait, 0.0))
        except TimeoutError:
            total = self.deadline is not None and time.monotonic() >= self.deadline
            why = (f"the request body did not arrive whole within {self.rule.total_timeout_s:g} s" if total
                   else f"the request body stalled: no bytes for {self.rule.idle_timeout_s:g} s")
            return await self._refuse(408, "request_timeout", why)
        if message["type"] == "http.request":
            self.total += len(message.get("body", b""))
            if self.total > self.rule.max_bytes:
                return await self._refuse(413, "request_too_large",
                                          f"the request body is over the {human_size(self.rule.max_bytes)}"
                                          f" limit of {self.path}")
            if not message.get("more_body", False):
                self.body_done = True
        else:
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def _refuse(self, status: int, code: str, message: str) -> Message:
        self.body_done = True
        if not self.started:
            self.started = True
            await _answer(self.scope, self._send, status, code, message)
        self.refused = True
        return {"type": "http.disconnect"}


async def _answer(scope: Scope, send: Send, status: int, code: str, message: str,
                  headers: dict[str, str] | None = None) -> None:
    response = error_response(status, code, message, headers={**(headers or {}), "Connection": "close"})

    async def no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
        return {"type": "http.disconnect"}

    await response(scope, no_receive, send)
