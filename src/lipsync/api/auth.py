"""Bearer-token auth. With LIPSYNC_API_KEY set, every endpoint but /health (and the static docs) needs
``Authorization: Bearer <key>``; the comparison is constant-time.

The check runs twice on purpose, from one function: in the request gate (api/gate.py), before any byte of
the body is read, and as the routers' dependency (which also documents the 401 in OpenAPI)."""

from __future__ import annotations

import hmac

from fastapi import Request

from lipsync.api.errors import Unauthorized


class ApiKeyCheck:
    def __init__(self, api_key: str | None) -> None:
        self._expected = api_key.encode() if api_key else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def problem(self, authorization: str | None) -> str | None:
        """Why the ``Authorization`` header value is refused, or None when it is fine (or no key is set)."""
        if self._expected is None:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "missing API key: send 'Authorization: Bearer <LIPSYNC_API_KEY>'"
        if not hmac.compare_digest(token.strip().encode(), self._expected):
            return "invalid API key"
        return None


def make_auth_dependency(check: ApiKeyCheck):
    async def require_api_key(request: Request) -> None:
        problem = check.problem(request.headers.get("authorization"))
        if problem:
            raise Unauthorized(problem)

    return require_api_key
