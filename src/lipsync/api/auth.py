"""Bearer-token auth. With LIPSYNC_API_KEY set, every endpoint but /health (and the static docs) needs
``Authorization: Bearer <key>``; the comparison is constant-time."""

from __future__ import annotations

import hmac

from fastapi import Request

from lipsync.api.errors import Unauthorized


def make_auth_dependency(api_key: str | None):
    expected = api_key.encode() if api_key else None

    async def require_api_key(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <LIPSYNC_API_KEY>'")
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise Unauthorized("invalid API key")

    return require_api_key
