"""The one table that turns every failure into an HTTP status, a code and a safe message."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

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

Scope = Literal[
    "all",
    "params",
    "token",
    "caller",
    "upload",
    "multipart",
    "tickets",
    "download",
    "ready",
    "sharex",
]


@dataclass(frozen=True)
class CatalogueEntry:
    """One error a client can receive: what the OpenAPI document says about it.

    ``scope`` (one or a tuple) says which operations can answer with it: ``all`` (every
    operation), ``params`` (operations whose parameters or body can be invalid), ``token``
    (operations that take a token), ``caller`` (operations that take a token or a ticket:
    uploads and ``POST /tickets``), ``upload`` (the upload routes), ``multipart``
    (``POST /upload``), ``tickets``, ``download``, ``ready`` and ``sharex``. A test checks
    that every status and code the code base can answer with has an entry here, so the
    document cannot fall behind.
    """

    status: int
    code: str
    scope: Scope | tuple[Scope, ...]
    description: str
    example: str
    retry_after: str | None = None


CATALOGUE: list[CatalogueEntry] = [
    CatalogueEntry(
        500,
        "internal_error",
        "all",
        "An unexpected failure; details are only logged.",
        "internal server error",
    ),
    CatalogueEntry(
        422,
        "invalid_request",
        "params",
        "A parameter is missing or malformed.",
        "service: Input should be a valid string",
    ),
    CatalogueEntry(
        401, "missing_token", "token", "No token or ticket was sent.", "an auth token is required"
    ),
    CatalogueEntry(
        403,
        "invalid_token",
        "token",
        "The token or ticket is wrong.",
        "the auth token is not valid",
    ),
    CatalogueEntry(
        400,
        "unsupported_service",
        "upload",
        "The `service` parameter names a backend this service does not run.",
        "unsupported service 'dropbox'; supported services: mega",
    ),
    CatalogueEntry(
        400,
        "invalid_filename",
        ("upload", "tickets"),
        "The file name is empty or cleans to nothing.",
        "the file name is empty or invalid",
    ),
    CatalogueEntry(
        400,
        "bad_request",
        ("upload", "tickets"),
        "The Content-Length header is not a number, or max_bytes is over the token's limit.",
        "the Content-Length header is not a number",
    ),
    CatalogueEntry(
        400,
        "client_disconnected",
        "upload",
        "The client closed the connection mid-body.",
        "the client closed the connection",
    ),
    CatalogueEntry(
        408,
        "client_timeout",
        "upload",
        "The client stopped sending the body for CLIENT_IDLE_TIMEOUT_SECONDS.",
        "the client sent nothing for 60 s",
    ),
    CatalogueEntry(
        413,
        "too_large",
        "upload",
        "The file is larger than MAX_UPLOAD_BYTES (from Content-Length, or while receiving).",
        "the file is larger than the limit of 1073741824 bytes",
    ),
    CatalogueEntry(
        503,
        "too_many_uploads",
        "upload",
        "Too many uploads in progress; try again after Retry-After seconds.",
        "too many uploads in progress; try again shortly",
        "5",
    ),
    CatalogueEntry(
        415,
        "unsupported_media_type",
        "multipart",
        "The body is not multipart/form-data.",
        "send the file as multipart/form-data in the field 'file'",
    ),
    CatalogueEntry(
        400,
        "bad_multipart",
        "multipart",
        "The multipart body is malformed, incomplete or has no boundary.",
        "the multipart body is malformed",
    ),
    CatalogueEntry(
        400,
        "too_many_files",
        "multipart",
        "More than one `file` part.",
        "send exactly one file per request",
    ),
    CatalogueEntry(
        422,
        "missing_file",
        "multipart",
        "The form has no `file` field.",
        "the form has no field 'file'",
    ),
    CatalogueEntry(404, "not_found", "download", "No such file.", "no such file"),
    CatalogueEntry(
        503,
        "not_ready",
        "ready",
        "Storage cannot take uploads now; the message says why.",
        "the storage backend is not ready",
        "10",
    ),
]
# Refused by the HTTP protocol layer (app/serving/protocol.py) before any route runs, so
# any operation can answer with them.
CATALOGUE += [
    CatalogueEntry(
        408,
        "request_timeout",
        "all",
        "The request head did not arrive within REQUEST_HEAD_TIMEOUT_SECONDS.",
        "the request headers did not arrive in time",
    ),
    CatalogueEntry(
        414,
        "uri_too_long",
        "all",
        "The request line is longer than MAX_REQUEST_LINE_BYTES.",
        "the request line is too long",
    ),
    CatalogueEntry(
        431,
        "headers_too_large",
        "all",
        "The request head is larger than MAX_REQUEST_HEAD_BYTES.",
        "the request headers are too large",
    ),
    CatalogueEntry(
        429,
        "too_many_connections",
        "all",
        "More than MAX_CONNECTIONS_PER_CLIENT connections at once from one address.",
        "more than 64 connections at once from one address",
        "10",
    ),
    CatalogueEntry(
        429,
        "too_many_failures",
        "caller",
        "Too many wrong tokens from this address (AUTH_FAILURES_PER_MINUTE).",
        "too many wrong tokens from this address; try again in 42 s",
        "42",
    ),
    CatalogueEntry(
        401,
        "ticket_expired",
        "caller",
        "The ticket has expired.",
        "the ticket expired at 2026-01-01T12:00:00Z",
    ),
    CatalogueEntry(
        403,
        "invalid_ticket",
        "caller",
        "The ticket is forged or damaged, its issuer was revoked, or tickets are off.",
        "the ticket is not valid",
    ),
    CatalogueEntry(
        403,
        "service_not_allowed",
        "upload",
        "The token may not use the `service` asked for.",
        "token 'game-mod' may not upload to 'local'",
    ),
    CatalogueEntry(
        403,
        "ticket_wrong_file",
        "upload",
        "The ticket is for another file name (or needs PUT /files/{name}).",
        "this ticket is only for the file 'report.pdf'",
    ),
    CatalogueEntry(
        429,
        "rate_limited",
        "upload",
        "The token's uploads_per_minute is used up; see Retry-After.",
        "rate limit: token 'game-mod' may start 10 uploads per minute",
        "20",
    ),
    CatalogueEntry(
        429,
        "quota_exceeded",
        "upload",
        "The token's bytes_per_day is used up; see Retry-After.",
        "daily quota: token 'game-mod' may upload 2147483648 bytes per day; 0 bytes are left",
        "3600",
    ),
    CatalogueEntry(
        429,
        "ticket_used_up",
        "upload",
        "The ticket has been used max_uses times.",
        "the ticket has been used up: it allows 1 upload(s)",
    ),
    CatalogueEntry(
        503,
        "tickets_unavailable",
        "upload",
        "Ticket uses cannot be counted now (shared state unreachable); see Retry-After.",
        "tickets cannot be checked right now (shared state unreachable); try again later",
        "30",
    ),
    CatalogueEntry(
        403,
        "may_not_issue",
        "tickets",
        "The token may not issue tickets (or a ticket was sent).",
        "token 'game-mod' may not issue tickets",
    ),
    CatalogueEntry(
        501,
        "tickets_disabled",
        "tickets",
        "TICKET_SECRET is not configured.",
        "tickets are not enabled: set TICKET_SECRET",
    ),
    CatalogueEntry(
        501,
        "sharex_unavailable",
        "sharex",
        "PUBLIC_BASE_URL is not configured, and the Host header is never trusted.",
        "no ShareX config: the service's public address is not configured (PUBLIC_BASE_URL)",
    ),
]
# The storage failures come from STORAGE_ERRORS, so a row added there is documented too.
_STORAGE_RETRY_AFTER = "30"
for _kind, _status, _code in STORAGE_ERRORS:
    if not any(entry.code == _code for entry in CATALOGUE):
        CATALOGUE.append(
            CatalogueEntry(
                _status,
                _code,
                "upload",
                (_kind.__doc__ or _code).split("\n")[0],
                "storage is unavailable, try again later" if _status == 503 else _code,
                _STORAGE_RETRY_AFTER if _status == 503 else None,
            )
        )

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
        headers = {"Retry-After": _STORAGE_RETRY_AFTER} if status == 503 else None
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


def catalogue_responses(scopes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """OpenAPI ``responses`` for the catalogue entries in ``scopes``: one per status,
    with every code of that status as a named example."""
    wanted = set(scopes) | {"all"}
    responses: dict[str, dict[str, Any]] = {}
    for entry in sorted(CATALOGUE, key=lambda entry: entry.status):
        scopes = {entry.scope} if isinstance(entry.scope, str) else set(entry.scope)
        if not scopes & wanted:
            continue
        response = responses.setdefault(
            str(entry.status),
            {
                "description": "",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorBody"},
                        "examples": {},
                    }
                },
            },
        )
        line = f"`{entry.code}`: {entry.description}"
        response["description"] = f"{response['description']}\n\n{line}".strip()
        response["content"]["application/json"]["examples"][entry.code] = {
            "summary": entry.description,
            "value": {"status": "error", "message": entry.example, "code": entry.code},
        }
        if entry.retry_after:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "example": int(entry.retry_after)},
                }
            }
    return responses
