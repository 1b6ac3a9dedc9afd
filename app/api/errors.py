"""Every error a client can receive, declared once, and the one mapping onto them.

Each error is an ``ErrorKind`` constant below: its status, code, when it happens, an
example message, and its ``Retry-After`` where waiting helps. The API layer raises one
by name (``raise NOT_FOUND("no such upload")``); the layers below raise their own domain
errors (``app.access.errors``, ``app.intake.errors``, ``app.storage.base``), which
``DOMAIN_ERRORS`` maps onto kinds by walking the exception's MRO, the way Starlette
finds a handler: the most specific class wins. The OpenAPI document's error responses
are generated from the same constants (``error_responses``), so nothing is kept in step
by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.access import errors as access
from app.intake import errors as intake
from app.storage import base as storage

log = logging.getLogger(__name__)

# Which operations can answer with an error, for the OpenAPI document: ``all`` (every
# operation), ``params`` (operations whose parameters or body can be invalid), ``token``
# (operations that take a token), ``caller`` (uploads and ``POST /tickets``: a token or
# a ticket), ``upload`` (the upload routes), ``multipart`` (``POST /upload``),
# ``tickets``, ``download``, ``ready``, ``sharex``, ``stored`` (the routes on stored
# uploads: list, delete, links, the delete URL), ``manage`` (those of them that take a
# token) and ``tus`` (the resumable uploads under /tus/).
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
    "stored",
    "manage",
    "tus",
]


# eq=False: kinds are constants, compared and hashed by identity.
@dataclass(frozen=True, eq=False)
class ErrorKind:
    """One error a client can receive.

    ``scope`` says which operations can answer with it (see ``Scope``); ``retry_after``
    is the wait the service suggests (seconds), and an error that knows a better one (a
    rate limit's window) carries its own; ``close`` asks the client to stop sending: the
    rest of its body will not be read.
    """

    status: int
    code: str
    scope: str  # space-separated Scope names
    retry_after: int | None
    close: bool
    description: str
    example: str

    def __call__(self, message: str | None = None, retry_after: int | None = None) -> ApiError:
        """The exception to raise: ``raise NOT_FOUND("no such upload")``."""
        return ApiError(self, message or self.example, retry_after)

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())

    def response(self, message: str, retry_after: int | None = None) -> JSONResponse:
        """This error as the response every error of the service is."""
        return JSONResponse(
            error_body(self.code, message),
            status_code=self.status,
            headers=self.response_headers(retry_after),
        )

    def response_headers(self, retry_after: int | None = None) -> dict[str, str]:
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names its scheme
        wait = retry_after if retry_after is not None else self.retry_after
        if wait is not None:
            headers["Retry-After"] = str(max(1, int(wait)))
        if self.close:
            headers["Connection"] = "close"
        return headers


class ApiError(Exception):
    """An error of the catalogue, raised by the API layer with its message."""

    def __init__(self, kind: ErrorKind, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error the service answers, from the app or the protocol."""
    return {"status": "error", "message": message, "code": code}


# -- the catalogue -------------------------------------------------------------------
# Waits suggested to clients, in seconds: one place for each kind of "try again".
NO_WAIT = None  # waiting would not help
BUSY_RETRY_S = 5  # an upload slot frees within seconds
NOT_READY_RETRY_S = 10  # a probe's interval
STORAGE_RETRY_S = 30  # storage or shared state out of reach
MINUTE_S = 60  # a one-minute window; the error carries the exact wait
HOUR_S = 3600  # a day's window; the error carries the exact wait

INTERNAL_ERROR = ErrorKind(500, "internal_error", "all", NO_WAIT, False,
    "An unexpected failure; details are only logged.",
    "internal server error")  # fmt: skip
INVALID_REQUEST = ErrorKind(422, "invalid_request", "params", NO_WAIT, False,
    "A parameter is missing or malformed.",
    "service: Input should be a valid string")  # fmt: skip
NOT_FOUND = ErrorKind(404, "not_found", "download stored", NO_WAIT, False,
    "No such file (or upload, or delete secret).",
    "no such file")  # fmt: skip
# Answered for a path that no operation has with this method: documented on none.
METHOD_NOT_ALLOWED = ErrorKind(405, "method_not_allowed", "", NO_WAIT, False,
    "The path does not take this method.",
    "Method Not Allowed")  # fmt: skip
NOT_SUPPORTED = ErrorKind(501, "not_supported", "download stored upload", NO_WAIT, False,
    "The storage backend in use cannot do this (e.g. serve downloads, keep upload records).",
    "the storage backend 'mega' does not serve downloads; links point at MEGA")  # fmt: skip
# Refused by the HTTP protocol layer (app/serving/protocol.py) before any route runs.
REQUEST_TIMEOUT = ErrorKind(408, "request_timeout", "all", NO_WAIT, True,
    "The request head did not arrive within REQUEST_HEAD_TIMEOUT_SECONDS.",
    "the request headers did not arrive in time")  # fmt: skip
URI_TOO_LONG = ErrorKind(414, "uri_too_long", "all", NO_WAIT, True,
    "The request line is longer than MAX_REQUEST_LINE_BYTES.",
    "the request line is too long")  # fmt: skip
HEADERS_TOO_LARGE = ErrorKind(431, "headers_too_large", "all", NO_WAIT, True,
    "The request head is larger than MAX_REQUEST_HEAD_BYTES.",
    "the request headers are too large")  # fmt: skip
TOO_MANY_CONNECTIONS = ErrorKind(429, "too_many_connections", "all", NOT_READY_RETRY_S, True,
    "More than MAX_CONNECTIONS_PER_CLIENT connections at once from one address.",
    "more than 64 connections at once from one address")  # fmt: skip
# Who is calling (app.access).
MISSING_TOKEN = ErrorKind(401, "missing_token", "token", NO_WAIT, False,
    "No token or ticket was sent.",
    "an auth token is required")  # fmt: skip
INVALID_TOKEN = ErrorKind(403, "invalid_token", "token", NO_WAIT, False,
    "The token is wrong.",
    "the auth token is not valid")  # fmt: skip
TOO_MANY_FAILURES = ErrorKind(429, "too_many_failures", "token", MINUTE_S, False,
    "Too many wrong tokens from this address (AUTH_FAILURES_PER_MINUTE).",
    "too many wrong tokens from this address; try again in 42 s")  # fmt: skip
TICKET_EXPIRED = ErrorKind(401, "ticket_expired", "caller", NO_WAIT, False,
    "The ticket has expired.",
    "the ticket expired 42 s ago")  # fmt: skip
INVALID_TICKET = ErrorKind(403, "invalid_ticket", "caller", NO_WAIT, False,
    "The ticket is forged or damaged, its issuer was revoked or rotated, or tickets are off.",
    "the ticket is not valid")  # fmt: skip
SERVICE_NOT_ALLOWED = ErrorKind(403, "service_not_allowed", "upload", NO_WAIT, False,
    "The token may not use the `service` asked for.",
    "token 'game-mod' may not upload to 'local'")  # fmt: skip
TICKET_WRONG_FILE = ErrorKind(403, "ticket_wrong_file", "upload", NO_WAIT, False,
    "The ticket is for another file name (or needs PUT /files/{name}).",
    "this ticket is only for the file 'report.pdf'")  # fmt: skip
RATE_LIMITED = ErrorKind(429, "rate_limited", "upload", MINUTE_S, False,
    "The token's uploads_per_minute is used up; see Retry-After.",
    "rate limit: token 'game-mod' may start 10 uploads per minute")  # fmt: skip
QUOTA_EXCEEDED = ErrorKind(429, "quota_exceeded", "upload", HOUR_S, False,
    "The token's bytes_per_day has no room for this file now; see Retry-After.",
    "daily quota: token 'game-mod' may upload 2000000 bytes per day; 0 bytes are left")  # fmt: skip
TICKET_USED_UP = ErrorKind(429, "ticket_used_up", "upload", NO_WAIT, False,
    "The ticket has been used max_uses times.",
    "the ticket has been used up: it allows 1 upload(s)")  # fmt: skip
TICKETS_UNAVAILABLE = ErrorKind(503, "tickets_unavailable", "upload", STORAGE_RETRY_S, False,
    "Ticket uses cannot be counted now (shared state unreachable); see Retry-After.",
    "tickets cannot be checked right now (shared state unreachable); try again later")  # fmt: skip
MAY_NOT_ISSUE = ErrorKind(403, "may_not_issue", "tickets", NO_WAIT, False,
    "The token may not issue tickets (or a ticket was sent).",
    "token 'game-mod' may not issue tickets")  # fmt: skip
TICKETS_DISABLED = ErrorKind(501, "tickets_disabled", "tickets", NO_WAIT, False,
    "TICKET_SECRET is not configured.",
    "tickets are not enabled: set TICKET_SECRET")  # fmt: skip
SHAREX_UNAVAILABLE = ErrorKind(501, "sharex_unavailable", "sharex", NO_WAIT, False,
    "PUBLIC_BASE_URL is not configured, and the Host header is never trusted.",
    "no ShareX config: the public address of the service is not set (PUBLIC_BASE_URL)")  # fmt: skip

# What the request asked for (app.api).
UNSUPPORTED_SERVICE = ErrorKind(400, "unsupported_service", "upload", NO_WAIT, False,
    "The `service` parameter names a backend this service does not run.",
    "unsupported service 'dropbox'; supported services: mega")  # fmt: skip
BAD_REQUEST = ErrorKind(400, "bad_request", "all", NO_WAIT, False,
    "Not valid HTTP/1.1, a Content-Length that is not a number, or max_bytes over a limit.",
    "the Content-Length header is not a number")  # fmt: skip
# Taking the body in (app.intake).
INVALID_FILENAME = ErrorKind(400, "invalid_filename", "upload tickets", NO_WAIT, False,
    "The file name is empty or cleans to nothing.",
    "the file name is empty or invalid")  # fmt: skip
CLIENT_DISCONNECTED = ErrorKind(400, "client_disconnected", "upload", NO_WAIT, False,
    "The client closed the connection mid-body.",
    "the client closed the connection")  # fmt: skip
CLIENT_TIMEOUT = ErrorKind(408, "client_timeout", "upload", NO_WAIT, True,
    "The body stalled (CLIENT_IDLE_TIMEOUT_SECONDS) or crawled (CLIENT_MIN_BYTES_PER_SECOND).",
    "the client sent nothing for 60 s")  # fmt: skip
TOO_LARGE = ErrorKind(413, "too_large", "upload", NO_WAIT, True,
    "The file is over the caller's limit, or the form fields beside it are over 64 KiB.",
    "the file is larger than the limit of 1073741824 bytes")  # fmt: skip
TOO_MANY_UPLOADS = ErrorKind(503, "too_many_uploads", "upload", BUSY_RETRY_S, False,
    "Too many uploads in progress; try again after Retry-After seconds.",
    "too many uploads in progress; try again shortly")  # fmt: skip
UNSUPPORTED_MEDIA_TYPE = ErrorKind(415, "unsupported_media_type", "multipart", NO_WAIT, False,
    "The body is not multipart/form-data.",
    "send the file as multipart/form-data in the field 'file'")  # fmt: skip
BAD_MULTIPART = ErrorKind(400, "bad_multipart", "multipart", NO_WAIT, False,
    "The multipart body is malformed, incomplete or has no boundary.",
    "the multipart body is malformed")  # fmt: skip
TOO_MANY_FILES = ErrorKind(400, "too_many_files", "multipart", NO_WAIT, False,
    "More than one `file` part.",
    "send exactly one file per request")  # fmt: skip
MISSING_FILE = ErrorKind(422, "missing_file", "multipart", NO_WAIT, False,
    "The form has no `file` field.",
    "the form has no field 'file'")  # fmt: skip
# Storage (app.storage); their messages are written for clients and passed through.
STORAGE_FULL = ErrorKind(507, "storage_full", "upload", NO_WAIT, False,
    "The destination has no room for the file.",
    "MEGA storage quota exceeded (EOVERQUOTA)")  # fmt: skip
STORAGE_TIMEOUT = ErrorKind(504, "storage_timeout", "upload stored", NO_WAIT, False,
    "The destination did not answer within the deadline.",
    "MEGA did not succeed within 1800 s")  # fmt: skip
STORAGE_UNAVAILABLE = ErrorKind(503, "storage_unavailable", "upload stored", STORAGE_RETRY_S, False,
    "The backend cannot take uploads right now (not reachable, logging in).",
    "the service is logging in to MEGA; try again shortly")  # fmt: skip
STORAGE_LOGIN_FAILED = ErrorKind(502, "storage_login_failed", "upload stored", NO_WAIT, False,
    "The destination refused the service's credentials.",
    "MEGA login failed: ENOENT")  # fmt: skip
STORAGE_FAILED = ErrorKind(502, "storage_failed", "upload stored", NO_WAIT, False,
    "The destination refused the upload or kept failing after retries.",
    "MEGA kept failing after 10 attempts")  # fmt: skip
NOT_READY = ErrorKind(503, "not_ready", "ready", NOT_READY_RETRY_S, False,
    "Storage cannot take uploads now; the message says why.",
    "the storage backend is not ready")  # fmt: skip
# -- upload records: list, delete, links, expiry, dedup, digests (README, "Records") --
MAY_NOT_LIST = ErrorKind(403, "may_not_list", "manage", NO_WAIT, False,
    "The token may only upload: listing and deleting uploads need can_list or can_manage.",
    "token 'game-mod' may only upload; listing and deleting uploads need can_list")  # fmt: skip
MAY_NOT_MANAGE = ErrorKind(403, "may_not_manage", "manage", NO_WAIT, False,
    "Other uploaders rely on the same file; only a token with can_manage may change its link.",
    "other uploaders rely on this file's link; only can_manage may change it")  # fmt: skip
INDEX_NOT_READY = ErrorKind(503, "index_not_ready", "stored", NOT_READY_RETRY_S, False,
    "The list of uploads is being built (at start-up) or is out of reach.",
    "the list of uploads is being built; try again shortly")  # fmt: skip
INVALID_DIGEST = ErrorKind(400, "invalid_digest", "upload", NO_WAIT, False,
    "Repr-Digest (PUT) or Paimon-File-Digest (POST) is not of the form sha-256=:<base64>:.",
    "Repr-Digest: sha-256 is not 32 bytes of base64")  # fmt: skip
DIGEST_MISMATCH = ErrorKind(400, "digest_mismatch", "upload", NO_WAIT, False,
    "The bytes received do not have the SHA-256 the client declared; nothing was stored.",
    "the SHA-256 of the body is 2cf24dba…, not the declared 486ea462…")  # fmt: skip
# -- resumable uploads (tus 1.0, /tus/) --------------------------------------------------
# Those refused before a PATCH's body is read close the connection: its body would be
# read for nothing (a browser resending a cut PATCH on its own gets a 409 at once).
TUS_VERSION = ErrorKind(412, "tus_version_unsupported", "tus", NO_WAIT, False,
    "Tus-Resumable is missing or not 1.0.0 (the answer carries Tus-Version).",
    "send Tus-Resumable: 1.0.0")  # fmt: skip
BAD_TUS_HEADER = ErrorKind(400, "bad_tus_header", "tus", NO_WAIT, True,
    "Upload-Length, Upload-Offset, Upload-Metadata or Upload-Checksum is missing or malformed.",
    "Upload-Offset is not a non-negative integer")  # fmt: skip
DEFER_LENGTH_UNSUPPORTED = ErrorKind(400, "defer_length_unsupported", "tus", NO_WAIT, False,
    "Upload-Defer-Length: storage needs the file's size when the upload starts.",
    "creation-defer-length is not supported: send Upload-Length")  # fmt: skip
CONCATENATION_UNSUPPORTED = ErrorKind(400, "concatenation_unsupported", "tus", NO_WAIT, False,
    "Upload-Concat: storage writes a file in order, so parts cannot be joined later.",
    "concatenation is not supported: send the file as one upload")  # fmt: skip
CHECKSUM_UNSUPPORTED = ErrorKind(400, "checksum_unsupported", "tus", NO_WAIT, True,
    "Upload-Checksum names an algorithm not in Tus-Checksum-Algorithm.",
    "checksum algorithm 'crc32' is not supported; use sha1, sha256 or sha512")  # fmt: skip
WRONG_CONTENT_TYPE = ErrorKind(415, "wrong_content_type", "tus", NO_WAIT, True,
    "A PATCH (or a creation request with a body) not sent as application/offset+octet-stream.",
    "send the piece as Content-Type: application/offset+octet-stream")  # fmt: skip
LENGTH_REQUIRED = ErrorKind(411, "length_required", "tus", NO_WAIT, True,
    "A PATCH without Content-Length.",
    "a PATCH needs a Content-Length")  # fmt: skip
CHECKSUM_PIECE_TOO_LARGE = ErrorKind(413, "checksum_piece_too_large", "tus", NO_WAIT, True,
    "A PATCH with Upload-Checksum over TUS_CHECKSUM_MAX_BYTES (it is checked in memory).",
    "a piece with Upload-Checksum may have at most 16777216 bytes")  # fmt: skip
PAST_UPLOAD_LENGTH = ErrorKind(413, "past_upload_length", "tus", NO_WAIT, True,
    "The piece would make the file longer than its Upload-Length.",
    "the piece ends at 2048, past the upload's length of 1024")  # fmt: skip
PIECE_TOO_SMALL = ErrorKind(400, "piece_too_small", "tus", NO_WAIT, True,
    "With MEGA a PATCH must bring at least the next whole MEGA chunk (at most 1 MiB), or the rest.",
    "a piece at offset 4718592 must carry at least 1048576 bytes, or the rest")  # fmt: skip
NO_SUCH_UPLOAD = ErrorKind(404, "no_such_upload", "tus", NO_WAIT, True,
    "No upload has this id for this token (never made, finished and forgotten, or ended).",
    "no such upload")  # fmt: skip
OFFSET_MISMATCH = ErrorKind(409, "offset_mismatch", "tus", NO_WAIT, True,
    "Upload-Offset is not where the upload stands; HEAD tells where.",
    "the upload is at offset 4718592, not 5242880")  # fmt: skip
UPLOAD_INCOMPLETE = ErrorKind(409, "upload_incomplete", "tus", NO_WAIT, False,
    "The upload's answer was asked for before its last byte arrived.",
    "the upload has 4718592 of 67108864 bytes")  # fmt: skip
UPLOAD_EXPIRED = ErrorKind(410, "upload_expired", "tus", NO_WAIT, True,
    "The upload was not finished before Upload-Expires; it is gone.",
    "the upload expired before it was finished; start a new one")  # fmt: skip
UPLOAD_LOCKED = ErrorKind(423, "upload_locked", "tus", 1, True,
    "Another request is writing to this upload right now.",
    "another request is writing to this upload")  # fmt: skip
CHECKSUM_MISMATCH = ErrorKind(460, "checksum_mismatch", "tus", NO_WAIT, False,
    "The piece does not match its Upload-Checksum; it was discarded: send it again.",
    "the piece's sha1 does not match Upload-Checksum; it was discarded, send it again")  # fmt: skip
UPLOAD_STATE_UNAVAILABLE = ErrorKind(503, "upload_state_unavailable", "tus", STORAGE_RETRY_S, False,
    "The shared store of open uploads (Redis) cannot be reached; see Retry-After.",
    "open uploads cannot be reached right now (shared state); try again")  # fmt: skip

CATALOGUE: tuple[ErrorKind, ...] = tuple(
    value for value in dict(globals()).values() if isinstance(value, ErrorKind)
)

# Domain errors of the layers below, onto their kinds. A class missing here falls back
# to its nearest listed base class; one with none is a 500 (and a test lists them all).
DOMAIN_ERRORS: dict[type[BaseException], ErrorKind] = {
    access.NoCredential: MISSING_TOKEN,
    access.InvalidToken: INVALID_TOKEN,
    access.InvalidTicket: INVALID_TICKET,
    access.TicketExpired: TICKET_EXPIRED,
    access.TooManyFailures: TOO_MANY_FAILURES,
    access.ServiceNotAllowed: SERVICE_NOT_ALLOWED,
    access.TicketWrongFile: TICKET_WRONG_FILE,
    access.NotPermitted: MAY_NOT_ISSUE,
    access.TicketsDisabled: TICKETS_DISABLED,
    access.RateLimited: RATE_LIMITED,
    access.QuotaExceeded: QUOTA_EXCEEDED,
    access.TicketUsedUp: TICKET_USED_UP,
    access.TicketsUnavailable: TICKETS_UNAVAILABLE,
    intake.UploadTooLarge: TOO_LARGE,
    intake.FormTooLarge: TOO_LARGE,
    intake.InvalidLength: BAD_REQUEST,
    intake.NotMultipart: UNSUPPORTED_MEDIA_TYPE,
    intake.BadMultipart: BAD_MULTIPART,
    intake.TooManyFiles: TOO_MANY_FILES,
    intake.MissingFile: MISSING_FILE,
    intake.InvalidFilename: INVALID_FILENAME,
    intake.NoFreeSlot: TOO_MANY_UPLOADS,
    intake.SourceGone: CLIENT_DISCONNECTED,
    intake.ClientTooSlow: CLIENT_TIMEOUT,
    ClientDisconnect: CLIENT_DISCONNECTED,
    storage.StorageFull: STORAGE_FULL,
    storage.StorageTimeout: STORAGE_TIMEOUT,
    storage.StorageUnavailable: STORAGE_UNAVAILABLE,
    storage.StorageBlocked: STORAGE_UNAVAILABLE,
    storage.StorageLoginFailed: STORAGE_LOGIN_FAILED,
    storage.UpstreamRejected: STORAGE_FAILED,
    storage.StorageError: STORAGE_FAILED,
    # Upload records.
    access.MayNotList: MAY_NOT_LIST,
    access.MayNotManage: MAY_NOT_MANAGE,
    intake.BadDigest: INVALID_DIGEST,
    intake.DigestMismatch: DIGEST_MISMATCH,
    storage.NoSuchFile: NOT_FOUND,
    storage.IndexNotReady: INDEX_NOT_READY,
    # -- resumable uploads (tus) --
    intake.NoSuchUpload: NO_SUCH_UPLOAD,
    intake.UploadExpired: UPLOAD_EXPIRED,
    intake.UploadBusy: UPLOAD_LOCKED,
    intake.HoldLost: UPLOAD_LOCKED,
    intake.OffsetMismatch: OFFSET_MISMATCH,
    intake.PastUploadLength: PAST_UPLOAD_LENGTH,
    intake.PieceTooSmall: PIECE_TOO_SMALL,
    intake.ChecksumMismatch: CHECKSUM_MISMATCH,
    intake.UploadIncomplete: UPLOAD_INCOMPLETE,
    intake.UploadStateUnavailable: UPLOAD_STATE_UNAVAILABLE,
}

# The base classes of everything DOMAIN_ERRORS maps: one exception handler each.
_ROOTS = (
    access.AccessError,
    intake.IntakeError,
    storage.StorageError,
    ClientDisconnect,
)

# Starlette's own HTTP errors (unknown paths, wrong methods, its body limits).
_HTTP_STATUS_KINDS = {
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    413: TOO_LARGE,
    415: UNSUPPORTED_MEDIA_TYPE,
    400: BAD_REQUEST,
}


def kind_of(error: BaseException) -> ErrorKind | None:
    """The catalogue entry for ``error``: its own for an ``ApiError``, else the entry of
    the nearest class in its MRO that ``DOMAIN_ERRORS`` lists; None for anything else."""
    if isinstance(error, ApiError):
        return error.kind
    for cls in type(error).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]
    return None


def error_response(error: BaseException) -> JSONResponse:
    """The response for any exception; details of unexpected ones are only logged."""
    kind = kind_of(error)
    if kind is None:
        log.exception("unexpected error", exc_info=error)
        return INTERNAL_ERROR.response(INTERNAL_ERROR.example)
    if kind.status >= 500 and isinstance(error, storage.StorageError) and not error.reported:
        log.warning("upload failed: %s (%s)", kind.code, error)
    elif kind is CLIENT_DISCONNECTED:
        log.info("client disconnected before the upload finished")
    message = str(error) if str(error) else kind.example
    retry_after = error.retry_after if isinstance(error, ApiError | access.AccessError) else None
    return kind.response(message, retry_after)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers so that no exception text, path or secret reaches a client."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return INVALID_REQUEST.response(message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = _HTTP_STATUS_KINDS.get(error.status_code)
        message = error.detail if isinstance(error.detail, str) else "request failed"
        if kind is None:
            return JSONResponse(
                error_body("http_error", message),
                status_code=error.status_code,
                headers=getattr(error, "headers", None),
            )
        return kind.response(message)

    async def _mapped(_: Request, error: Exception) -> JSONResponse:
        return error_response(error)

    # The roots of the mapped hierarchies; Starlette picks the handler by the MRO too.
    for root in (ApiError, *_ROOTS):
        app.add_exception_handler(root, _mapped)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=error)
        return INTERNAL_ERROR.response(INTERNAL_ERROR.example)


def error_responses(*scopes: Scope) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for an operation that can fail as ``scopes`` say (``all`` is
    always included): one per status, with every code of that status as a named example."""
    wanted = set(scopes) | {"all"}
    responses: dict[int | str, dict[str, Any]] = {}
    for kind in sorted(CATALOGUE, key=lambda kind: (kind.status, kind.code)):
        if not kind.scopes & wanted:
            continue
        response = responses.setdefault(
            str(kind.status),
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
        line = f"`{kind.code}`: {kind.description}"
        response["description"] = f"{response['description']}\n\n{line}".strip()
        response["content"]["application/json"]["examples"][kind.code] = {
            "summary": kind.description,
            "value": error_body(kind.code, kind.example),
        }
        if kind.retry_after is not None:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "example": kind.retry_after},
                }
            }
    return responses
