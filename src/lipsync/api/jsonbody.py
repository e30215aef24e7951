"""Parsing JSON request bodies ourselves, so every way a body can fail to parse is one typed error
(400 ``invalid_json``) instead of whatever FastAPI's own parser happens to raise (a RecursionError or a
UnicodeDecodeError became 400 ``http_400``).

``JSONBodyRoute`` is the route class of every JSON endpoint: it parses the body before FastAPI does and
leaves the result where Starlette caches ``request.json()``, so the body is parsed once.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from lipsync.api.errors import InvalidJSON, RequestInvalid, UnsupportedContentType

# Real bodies are three levels deep (body -> characters -> character); 32 leaves room and keeps the
# parser and the validator far from Python's recursion limit.
MAX_JSON_DEPTH = 32

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _depth_over(text: str, limit: int) -> bool:
    # Cheap first: a text with fewer opening brackets than the limit cannot nest deeper than it.
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def parse_json(data: bytes, *, what: str = "the body", field: str | None = None,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in ``data``; InvalidJSON (naming ``what`` and ``field``) when it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid UTF-8 (bad byte at offset {exc.start}); send UTF-8 JSON",
                          field=field) from None
    text = text.removeprefix("\ufeff")
    if _depth_over(text, max_depth):
        raise InvalidJSON(f"{what} is nested more than {max_depth} levels deep", field=field)
    try:
        value = json.loads(text, parse_constant=_no_constant)
        # Unpaired surrogate escapes ("\\ud800") parse, then break every UTF-8 encoder downstream.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                          field=field) from None
    except UnicodeEncodeError:
        raise InvalidJSON(f"{what} holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)",
                          field=field) from None
    except RecursionError:
        raise InvalidJSON(f"{what} is nested too deeply", field=field) from None
    except ValueError as exc:  # NaN/Infinity, integers over Python's digit limit
        raise InvalidJSON(f"{what} is not valid JSON: {exc}", field=field) from None
    return value


def _is_json(content_type: str | None) -> bool:
    # The same rule as FastAPI's: no Content-Type, application/json or any +json type.
    if not content_type:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class JSONBodyRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def parse_then_handle(request: Request):
            try:
                body = await request.body()
            except ClientDisconnect:  # gone, or refused by the request gate (which has answered already)
                raise RequestInvalid("the client disconnected before the body was complete") from None
            if body:
                content_type = request.headers.get("content-type")
                if not _is_json(content_type):
                    raise UnsupportedContentType(f"send the body as JSON (Content-Type: application/json),"
                                                 f" not {content_type}")
                request._json = parse_json(body)  # Starlette's cache: FastAPI's request.json() reads it
            return await handler(request)

        return parse_then_handle
