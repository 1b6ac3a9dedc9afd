"""The one table that turns every failure into an HTTP status, a code and a safe message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.relay import ClientTooSlow, SourceGone
from app.spool import UploadTooLarge
from app.storage.base import (
    StorageError,
    StorageFull,
    StorageLoginFailed,
    StorageTimeout,
    StorageUnavailable,
    UpstreamRejected,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the API layer refuses, with everything the client will see."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# Storage failures, most specific first. Their messages are written for clients
# (StorageError's contract), so they are passed through.
STORAGE_ERRORS: list[tuple[type[StorageError], int, str]] = [
    (StorageFull, 507, "storage_full"),
    (StorageTimeout, 504, "storage_timeout"),
    (StorageUnavailable, 503, "storage_unavailable"),
    (StorageLoginFailed, 502, "storage_login_failed"),
    (UpstreamRejected, 502, "storage_failed"),
    (StorageError, 502, "storage_failed"),
]

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error the service answers, from the app or the protocol."""
    return {"status": "error", "message": message, "code": code}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def storage_error_status(error: StorageError) -> tuple[int, str]:
    for kind, status, code in STORAGE_ERRORS:
        if isinstance(error, kind):
            return status, code
    raise AssertionError("StorageError is the last row")  # pragma: no cover


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers so that no exception text, path or secret reaches a client."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_: Request, error: UploadTooLarge) -> JSONResponse:
        # The rest of the body is never read; closing tells the client to stop sending.
        return error_response(413, "too_large", str(error), {"Connection": "close"})

    @app.exception_handler(StorageError)
    async def _storage(_: Request, error: StorageError) -> JSONResponse:
        status, code = storage_error_status(error)
        log.warning("upload failed: %s (%s)", code, error)
        headers = {"Retry-After": "30"} if status == 503 else None
        return error_response(status, code, str(error), headers)

    @app.exception_handler(ClientTooSlow)
    async def _slow(_: Request, error: ClientTooSlow) -> JSONResponse:
        return error_response(408, "client_timeout", str(error), {"Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    @app.exception_handler(SourceGone)
    async def _gone(_: Request, __: Exception) -> JSONResponse:
        log.info("client disconnected before the upload finished")
        return error_response(400, "client_disconnected", "the client closed the connection")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        message = error.detail if isinstance(error.detail, str) else "request failed"
        return error_response(error.status_code, code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal server error")
