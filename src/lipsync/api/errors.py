"""One JSON error shape for every failure: ``{"error": {"code", "message", "field"?}}``.

Validation errors become 422 ``validation_error`` naming the first offending field; LipSyncError
subclasses carry their own code and status; anything unexpected becomes a 500 ``internal_error``
with no traceback in the body (the log has it).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lipsync.errors import LipSyncError
from lipsync.jobs.models import JobFailure
from lipsync.options import describe_errors

log = logging.getLogger(__name__)


class Unauthorized(LipSyncError):
    code = "unauthorized"
    http_status = 401


class ResultNotReady(LipSyncError):
    code = "result_not_ready"
    http_status = 409


class ResultNotStored(LipSyncError):
    code = "result_not_stored"
    http_status = 404


class RequestInvalid(LipSyncError):
    """A request problem found by our own parsing (the multipart upload), reported like pydantic's."""

    code = "validation_error"
    http_status = 422


class RequestTooLarge(LipSyncError):
    code = "request_too_large"
    http_status = 413


class InvalidJSON(LipSyncError):
    """A JSON body (or the upload's ``options`` part) that cannot be parsed: not UTF-8, not JSON, nested
    too deeply, or holding what JSON does not allow (NaN, unpaired surrogates). One code for all."""

    code = "invalid_json"
    http_status = 400


class RequestTimeout(LipSyncError):
    code = "request_timeout"
    http_status = 408


class UnsupportedContentType(LipSyncError):
    code = "unsupported_media_type"
    http_status = 415


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def failure_response(failure: JobFailure) -> JSONResponse:
    return error_response(failure.http_status, failure.code, failure.message, failure.field)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One wording for the API and the CLI (lipsync.options): field, then what was wrong.
        field, message = describe_errors(list(exc.errors()))
        return error_response(422, "validation_error", message, field)

    @app.exception_handler(LipSyncError)
    async def _lipsync(request: Request, exc: LipSyncError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if exc.http_status == 429:
            headers = {"Retry-After": "5"}
        if exc.http_status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
        return error_response(exc.http_status, exc.code, exc.message, exc.field, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; the server log has the details")
