"""Resumable uploads over tus 1.0 at ``/tus/``: the HTTP side (headers in, headers out).

What is followed, from the protocol (``protocol.md`` of tus-resumable-upload-protocol,
version 1.0.0): the core (HEAD, PATCH with ``application/offset+octet-stream``, 409 on a
wrong ``Upload-Offset``, ``Tus-Resumable`` everywhere, OPTIONS with ``Tus-Version``,
``Tus-Extension``, ``Tus-Max-Size``, ``X-HTTP-Method-Override``) and the extensions
``creation``, ``creation-with-upload``, ``termination``, ``expiration`` and ``checksum``.
``creation-defer-length`` and ``concatenation`` are not offered: storage needs the size
up front and writes a file in order, so a request using them gets a 400 that says so
(tusd's ``ErrNotImplemented`` and ``ERR_CONCATENATION_UNSUPPORTED`` cases, as 4xx).

Admission is the other uploads': the same credentials, per-token limits and tickets,
counted once per upload when it is created (the file's size is reserved then); each
PATCH takes an upload slot while it runs. The upload itself (states, hold, pieces,
finishing) is ``app.intake.resumable``; the stored file's answer is built by the same
function as POST's and PUT's (``uploads.upload_result``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
from typing import Annotated

import anyio
from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Path, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access.admission import Caller
from app.api.deps import (
    CallerDep,
    ContinuingCallerDep,
    ServiceParam,
    Services,
    ServicesDep,
    decide_upload,
    take_allowances,
)
from app.api.errors import (
    BAD_TUS_HEADER,
    CHECKSUM_PIECE_TOO_LARGE,
    CHECKSUM_UNSUPPORTED,
    CONCATENATION_UNSUPPORTED,
    DEFER_LENGTH_UNSUPPORTED,
    LENGTH_REQUIRED,
    TUS_VERSION,
    WRONG_CONTENT_TYPE,
    error_responses,
)
from app.api.models import UploadResult
from app.api.uploads import upload_result
from app.intake.body import Intake, pump
from app.intake.errors import InvalidFilename
from app.intake.filenames import filename_or_default
from app.intake.relay import BodyRelay
from app.intake.resumable import (
    CHECKSUMS,
    MemoryPiece,
    ResumableUploads,
    UploadRecord,
    UploadSession,
    check_piece,
    parse_checksum,
)
from app.records.service import Receipt
from app.storage.base import StoredFile

TUS_RESUMABLE = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "termination", "expiration", "checksum")
OFFSET_STREAM = "application/offset+octet-stream"
# The finished file's link, on the PATCH (or HEAD) that sees the upload complete.
LINK_HEADER = "Paimon-Link"
# Headers a browser page on another origin needs (added to CORS when CORS_ORIGINS is set).
REQUEST_HEADERS = [
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Checksum",
    "Upload-Defer-Length",
    "Upload-Concat",
    "X-HTTP-Method-Override",
    "X-Requested-With",
]
EXPOSED_HEADERS = [
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    LINK_HEADER,
]
METADATA_MAX_BYTES = 4096

router = APIRouter(prefix="/tus", tags=["resumable uploads (tus)"])


def _headers(*names: str) -> dict[str, dict[str, object]]:
    """OpenAPI descriptions of the tus headers an answer carries."""
    described = {
        "Location": "The upload's URL (relative): `/tus/{id}`.",
        "Upload-Offset": "Bytes stored so far: send the next piece from here.",
        "Upload-Length": "The file's size, as given at creation.",
        "Upload-Expires": "After this time (RFC 9110 date) the upload is gone.",
        "Upload-Metadata": "As given at creation.",
        LINK_HEADER: "The file's link, once the upload is complete.",
        "Tus-Version": "`1.0.0`.",
        "Tus-Extension": ", ".join(EXTENSIONS) + ".",
        "Tus-Max-Size": "MAX_UPLOAD_BYTES (a token may have a smaller limit).",
        "Tus-Checksum-Algorithm": "sha1, sha256, sha512.",
    }
    return {name: {"description": described[name], "schema": {"type": "string"}} for name in names}


def get_uploads(request: Request) -> ResumableUploads:
    return request.app.state.resumable


UploadsDep = Annotated[ResumableUploads, Depends(get_uploads)]
UploadId = Annotated[str, Path(description="The upload's id, from the creation's `Location`.")]


async def tus_version(
    tus_resumable: Annotated[
        str | None, Header(description="The protocol version: `1.0.0`.")
    ] = None,
) -> None:
    """Every tus request states the protocol's version (412 otherwise, with Tus-Version)."""
    if tus_resumable != TUS_RESUMABLE:
        raise TUS_VERSION(f"send Tus-Resumable: {TUS_RESUMABLE} (got {str(tus_resumable)[:20]!r})")


TusVersion = Depends(tus_version)


# -- discovery -------------------------------------------------------------------------------


@router.options(
    "/",
    status_code=204,
    responses={
        204: {
            "description": "What is offered",
            "headers": _headers(
                "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm"
            ),
        }
    },
    summary="What this tus server offers (no token needed)",
)
@router.options("/{upload_id}", status_code=204, include_in_schema=False)
async def options(services: ServicesDep) -> Response:
    return Response(status_code=204, headers=_offer(services))


def _offer(services: Services) -> dict[str, str]:
    return {
        "Tus-Version": TUS_RESUMABLE,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(int(services.settings.access.max_upload_bytes)),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }


# -- creation ------------------------------------------------------------------------------


@router.post(
    "/",
    status_code=201,
    dependencies=[TusVersion],
    responses={
        201: {
            "description": "Created",
            "headers": _headers("Location", "Upload-Offset", "Upload-Expires", LINK_HEADER),
        },
        **error_responses("token", "caller", "upload", "tus"),
    },
    summary="Create an upload (tus creation, optionally with its first piece)",
    description=(
        "`Upload-Length` (required), `Upload-Metadata` (`filename`, `service`, "
        "`expires_in` and `mtime` in seconds; base64 values). The answer's `Location` is "
        "the upload's URL. A body sent as "
        "`application/offset+octet-stream` is the first piece (creation-with-upload)."
    ),
)
async def create(
    request: Request,
    services: ServicesDep,
    uploads: UploadsDep,
    caller: CallerDep,
    service: ServiceParam = None,
    upload_length: Annotated[str | None, Header()] = None,
    upload_metadata: Annotated[str | None, Header()] = None,
    upload_defer_length: Annotated[str | None, Header()] = None,
    upload_concat: Annotated[str | None, Header()] = None,
) -> Response:
    if upload_defer_length is not None:
        raise DEFER_LENGTH_UNSUPPORTED()
    if upload_concat is not None:
        raise CONCATENATION_UNSUPPORTED()
    size = _count(upload_length, "Upload-Length")
    metadata = parse_metadata(upload_metadata or "")
    backend = services.backend_for(metadata.get("service") or service)
    try:
        filename = filename_or_default(metadata.get("filename") or metadata.get("name"))
    except InvalidFilename:
        filename = filename_or_default(None)
    # The same decision as for any upload, counted once for the whole upload.
    _, expires = decide_upload(
        services,
        caller,
        backend,
        filename,
        size,
        expires_in=_metadata_seconds(metadata, "expires_in"),
    )
    mtime = _metadata_seconds(metadata, "mtime")
    # creation-with-upload: a body is the first piece (and must be sent as one).
    has_body = request.headers.get("content-length", "0") != "0" or "chunked" in (
        request.headers.get("transfer-encoding", "")
    )
    piece = _piece_length(request) if has_body else 0
    grant = await take_allowances(services, caller, size)
    record = await to_thread.run_sync(
        uploads.create,
        caller,
        grant.reservation(),
        size,
        filename,
        upload_metadata or "",
        mtime,
        expires,
    )
    location = f"{request.scope.get('root_path', '')}/tus/{record.id}"
    if piece or size == 0:
        # creation-with-upload: the body is the first piece. Whatever of it is not stored
        # (a failure half way) the client sends again from the Upload-Offset it is told.
        record = await _add_piece(request, services, uploads, record.id, caller, 0, piece)
    headers = {"Location": location, **_position(request, services, record)}
    return Response(status_code=201, headers=headers)


# -- the core: where is it, add to it --------------------------------------------------------


@router.head(
    "/{upload_id}",
    dependencies=[TusVersion],
    responses={
        200: {
            "description": "Where it stands",
            "headers": _headers(
                "Upload-Offset", "Upload-Length", "Upload-Expires", "Upload-Metadata", LINK_HEADER
            ),
        },
        **error_responses("token", "caller", "tus"),
    },
    summary="Where an upload stands (Upload-Offset)",
)
async def head(
    request: Request,
    services: ServicesDep,
    uploads: UploadsDep,
    caller: ContinuingCallerDep,
    upload_id: UploadId,
) -> Response:
    record = await to_thread.run_sync(uploads.look, upload_id, caller)
    if record.offset == record.size and record.finished is None:
        # Complete but not finished (the finishing PATCH failed): finish now, so the
        # client that sees the whole file there also gets its link.
        record = await to_thread.run_sync(uploads.answer, upload_id, caller)
    headers = {"Upload-Length": str(record.size), **_position(request, services, record)}
    if record.metadata:
        headers["Upload-Metadata"] = record.metadata
    return Response(status_code=200, headers=headers)


@router.patch(
    "/{upload_id}",
    status_code=204,
    dependencies=[TusVersion],
    responses={
        204: {
            "description": "Stored up to Upload-Offset",
            "headers": _headers("Upload-Offset", "Upload-Expires", LINK_HEADER),
        },
        **error_responses("token", "caller", "upload", "tus"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OFFSET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    summary="Add the next piece at Upload-Offset",
    description=(
        "The answer's `Upload-Offset` is where the upload stands afterwards: with MEGA "
        "the end of the last whole MEGA chunk stored, so a piece's tail may have to be "
        "sent again. When the upload is complete the answer carries the link in "
        f"`{LINK_HEADER}`; `GET /tus/{{id}}` gives the usual JSON answer."
    ),
)
async def patch(
    request: Request,
    services: ServicesDep,
    uploads: UploadsDep,
    caller: ContinuingCallerDep,
    upload_id: UploadId,
    upload_offset: Annotated[str | None, Header()] = None,
) -> Response:
    length = _piece_length(request)
    offset = _count(upload_offset, "Upload-Offset")
    record = await _add_piece(request, services, uploads, upload_id, caller, offset, length)
    return Response(status_code=204, headers=_position(request, services, record))


# -- termination and the answer ------------------------------------------------------------


@router.delete(
    "/{upload_id}",
    status_code=204,
    dependencies=[TusVersion],
    responses=error_responses("token", "caller", "tus"),
    summary="End an upload (tus termination): what it stored is dropped; a finished one is "
    "taken back as its delete URL would",
)
async def terminate(
    uploads: UploadsDep, caller: ContinuingCallerDep, upload_id: UploadId
) -> Response:
    await to_thread.run_sync(uploads.terminate, upload_id, caller)
    return Response(status_code=204)


@router.get(
    "/{upload_id}",
    response_model=UploadResult,
    responses=error_responses("token", "caller", "tus"),
    summary="The finished upload's answer, as POST /upload and PUT answer",
)
async def answer(
    request: Request,
    services: ServicesDep,
    uploads: UploadsDep,
    caller: ContinuingCallerDep,
    upload_id: UploadId,
) -> UploadResult:
    record = await to_thread.run_sync(uploads.answer, upload_id, caller)
    return _result(request, services, record)


# -- internals ----------------------------------------------------------------------------


async def _add_piece(
    request: Request,
    services: Services,
    uploads: ResumableUploads,
    upload_id: str,
    caller: Caller,
    offset: int,
    length: int,
) -> UploadRecord:
    """Add the request's body as the piece at ``offset``; the upload afterwards."""
    checksum = _checksum(request, services, length)
    slot = await services.upload_slots.acquire()
    try:
        session = await to_thread.run_sync(uploads.open, upload_id, caller)
        try:
            session.check_piece(offset, length)
            if checksum is not None:
                data = await _whole_body(request, services, length)
                await to_thread.run_sync(check_piece, *checksum, data)
                await to_thread.run_sync(session.append, MemoryPiece(data), length)
            else:
                await _relay_piece(request, services, session, length)
            return session.record
        finally:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(session.release)
    finally:
        slot.release()


async def _relay_piece(
    request: Request, services: Services, session: UploadSession, length: int
) -> None:
    """The body into storage while it arrives: the event loop moves bytes, a worker
    thread stores them (as a streamed PUT's are)."""
    relay = BodyRelay(length)
    failure: BaseException | None = None

    async def receive() -> None:
        # pump fails the relay; storage re-raises that once what it holds is recorded.
        with contextlib.suppress(Exception):
            await pump(request.stream(), _PieceIntake(relay), services.pace)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(receive)
        try:
            await to_thread.run_sync(session.append, relay, length)
        except BaseException as error:
            failure = error
        finally:
            relay.stop()
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


class _PieceIntake(Intake):
    """A piece's bytes to the relay: no copy, no hash (the upload keeps its own)."""

    def __init__(self, relay: BodyRelay) -> None:
        super().__init__(relay.size, None, relay)

    def take(self, block: bytes) -> None:
        assert self.relay is not None
        self.relay.put(block)


class _Collected(Intake):
    """A checksummed piece, held in memory (at most TUS_CHECKSUM_MAX_BYTES) until checked."""

    def __init__(self, length: int) -> None:
        super().__init__(length, None, None)
        self.data = bytearray()

    def take(self, block: bytes) -> None:
        self.data.extend(block)


async def _whole_body(request: Request, services: Services, length: int) -> bytes:
    collected = _Collected(length)
    await pump(request.stream(), collected, services.pace)
    return bytes(collected.data)


def _checksum(request: Request, services: Services, length: int) -> tuple[str, bytes] | None:
    header = request.headers.get("upload-checksum")
    if header is None:
        return None
    try:
        parsed = parse_checksum(header)
    except ValueError as error:
        raise BAD_TUS_HEADER(str(error)) from None
    if parsed is None:
        name = header.strip().partition(" ")[0][:20]
        raise CHECKSUM_UNSUPPORTED(
            f"checksum algorithm {name!r} is not supported; use {', '.join(CHECKSUMS)}"
        )
    most = int(services.settings.tus.checksum_max_bytes)
    if length > most:
        raise CHECKSUM_PIECE_TOO_LARGE(
            f"a piece with Upload-Checksum may have at most {most} bytes"
        )
    return parsed


def _piece_length(request: Request) -> int:
    if request.headers.get("content-type", "").split(";")[0].strip() != OFFSET_STREAM:
        raise WRONG_CONTENT_TYPE()
    declared = request.headers.get("content-length")
    if declared is None:
        raise LENGTH_REQUIRED()
    return _count(declared, "Content-Length")


def _count(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or len(value) > 19:
        raise BAD_TUS_HEADER(f"{name} is not a non-negative integer")
    return int(value)


def _metadata_seconds(metadata: dict[str, str], key: str) -> int | None:
    """A whole number of seconds given in ``Upload-Metadata`` (``expires_in``, ``mtime``)."""
    given = metadata.get(key)
    if not given:
        return None
    if not given.isdigit() or int(given) > 2**40:
        raise BAD_TUS_HEADER(f"Upload-Metadata {key} must be a whole number of seconds")
    return int(given)


def parse_metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs, unique keys.

    Values are decoded as UTF-8; one that is not (binary metadata) is kept as "" here
    (and still returned to the client as sent).
    """
    if len(header.encode()) > METADATA_MAX_BYTES:
        raise BAD_TUS_HEADER(f"Upload-Metadata is longer than {METADATA_MAX_BYTES} bytes")
    found: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in header.split(","))):
        key, _, encoded = pair.partition(" ")
        if key in found or " " in encoded.strip():
            raise BAD_TUS_HEADER("Upload-Metadata has a repeated key or a space in a value")
        try:
            value = base64.b64decode(encoded.strip(), validate=True)
        except (ValueError, binascii.Error):
            raise BAD_TUS_HEADER(f"Upload-Metadata: {key[:40]!r} is not base64") from None
        try:
            found[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            found[key] = ""
    return found


def _position(request: Request, services: Services, record: UploadRecord) -> dict[str, str]:
    """Upload-Offset and Upload-Expires; the link once the upload is finished."""
    headers = {
        "Upload-Offset": str(record.offset),
        "Upload-Expires": email.utils.formatdate(record.expires_at, usegmt=True),
    }
    if record.finished is not None:
        headers[LINK_HEADER] = _result(request, services, record).link
    return headers


def _result(request: Request, services: Services, record: UploadRecord) -> UploadResult:
    done = record.finished
    assert done is not None
    stored = StoredFile(handle=done.handle, link=done.link)
    receipt = Receipt(done.delete_path, done.expires) if done.delete_path else None
    name = done.name or record.filename
    return upload_result(request, services, stored, name, done.size, done.sha256, receipt)


class TusProtocol:
    """ASGI middleware for /tus/: ``Tus-Resumable`` on every answer (errors too),
    ``Tus-Version`` on a 412, ``Cache-Control: no-store`` (HEAD must not be cached), and
    ``X-HTTP-Method-Override`` on POST taken as the method (for clients behind proxies
    that pass only GET and POST; tusd honours it on POST only too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        path = path.removeprefix(scope.get("root_path", "") or "\0")
        if scope["type"] != "http" or not (path == "/tus" or path.startswith("/tus/")):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            override = dict(scope.get("headers", [])).get(b"x-http-method-override")
            if override:
                scope = {**scope, "method": override.decode("latin-1").strip().upper()}

        async def send_with_tus(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"tus-resumable", TUS_RESUMABLE.encode()),
                    (b"cache-control", b"no-store"),
                ]
                if message["status"] == 412:
                    extra.append((b"tus-version", TUS_RESUMABLE.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_tus)
