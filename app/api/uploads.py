"""Upload routes: multipart ``POST /upload`` (the existing clients' contract) and raw ``PUT``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

import anyio
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request

from app.api.deps import RETRY_AFTER_BUSY, Authorized, Services, ServicesDep
from app.api.errors import ApiError
from app.api.models import ErrorBody, UploadResult
from app.api.receive import (
    FILE_FIELD,
    MULTIPART_OVERHEAD,
    body_chunks,
    check_declared_length,
    receive_multipart,
    receive_raw,
)
from app.filenames import InvalidFilename, safe_filename
from app.relay import BodyRelay
from app.spool import SpoolSink
from app.storage.base import StorageBackend, StoredFile, StreamingBackend, supports_streaming

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

_ERRORS = {
    400: "Bad request: malformed body, empty file name, unknown service.",
    401: "No token or ticket was sent, or the ticket has expired.",
    403: "The token or ticket is wrong, or not allowed this service or file name.",
    413: "The file is larger than MAX_UPLOAD_BYTES, or the token's or ticket's own limit.",
    422: "The form has no `file` field.",
    429: "A token's rate limit or daily quota reached, a ticket used up, or too many wrong "
    "tokens from this address; see Retry-After.",
    502: "The storage backend failed after retries, or refused the service's login.",
    503: "Too many uploads in progress (see Retry-After), or storage not ready.",
    504: "The storage backend timed out.",
    507: "The storage backend is full.",
}
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()
}
ServiceParam = Annotated[
    str | None,
    Query(description="Storage backend to use, e.g. `mega`; omitted means the configured one."),
]
_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}

Receiver = Callable[[Request, SpoolSink], Awaitable[str | None]]


@router.post(
    "/upload",
    response_model=UploadResult,
    dependencies=[Authorized],
    responses={**ERROR_RESPONSES, 415: {"model": ErrorBody, "description": "Not multipart."}},
    openapi_extra=_MULTIPART_BODY,
    summary="Upload a file as multipart/form-data (field `file`)",
)
async def upload_form(
    request: Request, services: ServicesDep, service: ServiceParam = None
) -> UploadResult:
    backend = services.backend_for(service)
    check_declared_length(request, services.spool.limit, MULTIPART_OVERHEAD)
    return await _upload(request, services, backend, receive_multipart, None)


@router.put(
    "/files/{filename}",
    response_model=UploadResult,
    dependencies=[Authorized],
    responses=ERROR_RESPONSES,
    openapi_extra=_RAW_BODY,
    summary="Upload the raw request body as a file (`curl -T file URL`)",
)
async def upload_raw(
    request: Request,
    services: ServicesDep,
    filename: Annotated[str, Path(description="Name to store the file under.")],
    service: ServiceParam = None,
) -> UploadResult:
    backend = services.backend_for(service)
    name = _clean_name(filename)
    check_declared_length(request, services.spool.limit)
    declared = request.headers.get("content-length")
    if declared is not None and supports_streaming(backend):
        return await _relay(request, services, backend, name, int(declared))
    return await _upload(request, services, backend, _raw_receiver, name)


async def _raw_receiver(request: Request, sink: SpoolSink) -> None:
    await receive_raw(request, sink)


@contextlib.contextmanager
def _upload_slot(services: Services) -> Iterator[None]:
    try:
        services.upload_slots.acquire_nowait()
    except anyio.WouldBlock:
        raise ApiError(
            503,
            "too_many_uploads",
            "too many uploads in progress; try again shortly",
            {"Retry-After": RETRY_AFTER_BUSY},
        ) from None
    try:
        yield
    finally:
        services.upload_slots.release()


async def _upload(
    request: Request,
    services: Services,
    backend: StorageBackend,
    receive: Receiver,
    name: str | None,
) -> UploadResult:
    """Spool the body to a temporary file, then hand the file to the backend."""
    with _upload_slot(services):
        async with services.spool.open() as sink:
            client_name = await receive(request, sink)
            name = name or _clean_name(client_name or "")
            spooled = await sink.finish()
            stored = await to_thread.run_sync(backend.store, spooled.path, name, spooled.size)
    return _result(request, services, backend, stored, name, spooled.size, spooled.sha256)


async def _relay(
    request: Request, services: Services, backend: StreamingBackend, name: str, size: int
) -> UploadResult:
    """Hand the body to the backend while it arrives: no temporary file, bounded memory."""
    relay = BodyRelay(size, services.settings.client_idle_timeout_seconds)
    failure: Exception | None = None
    with _upload_slot(services):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(relay.feed, body_chunks(request))
            try:
                stored = await to_thread.run_sync(backend.store_stream, relay, name, size)
            except Exception as error:  # re-raised below, outside the task group
                failure = error
            finally:
                relay.stop()
                # The rest of the body is not wanted: stop waiting for it now.
                tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return _result(request, services, backend, stored, name, size, relay.sha256())


def _result(
    request: Request,
    services: Services,
    backend: StorageBackend,
    stored: StoredFile,
    name: str,
    size: int,
    sha256: str,
) -> UploadResult:
    log.info("stored %d bytes on %s as %s", size, backend.name, stored.handle)
    return UploadResult(
        filename=name,
        service=backend.name,
        link=_absolute(stored.link, request, services.settings.public_base_url),
        size=size,
        sha256=sha256,
        handle=stored.handle,
    )


def _clean_name(raw: str) -> str:
    try:
        return safe_filename(raw)
    except InvalidFilename:
        raise ApiError(400, "invalid_filename", "the file name is empty or invalid") from None


def _absolute(link: str, request: Request, public_base_url: str | None) -> str:
    if not link.startswith("/"):
        return link
    base = public_base_url or str(request.base_url).rstrip("/")
    return base + link
