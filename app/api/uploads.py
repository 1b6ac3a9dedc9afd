"""Upload routes: multipart ``POST /upload`` (the existing clients' contract) and raw ``PUT``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
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
    Intake,
    MultipartIntake,
    check_declared_length,
    multipart_boundary,
    pump,
)
from app.filenames import filename_or_default
from app.relay import BodyRelay, PredictionMissed, SourceGone
from app.spool import SpoolFile
from app.storage.base import (
    StorageBackend,
    StoredFile,
    supports_streaming,
    wants_replayable_streams,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

_ERRORS = {
    400: "Bad request: malformed body, unknown service, or the client left before its answer.",
    401: "No token or ticket was sent, or the ticket has expired.",
    403: "The token or ticket is wrong, or not allowed this service or file name.",
    408: "The client sent nothing for CLIENT_IDLE_TIMEOUT_SECONDS, or too slowly on average.",
    413: "The file is larger than MAX_UPLOAD_BYTES, or the token's or ticket's own limit, "
    "or the form beside it is over 64 KiB.",
    422: "The form has no `file` field.",
    429: "A token's rate limit or daily quota reached, a ticket used up, or too many wrong "
    "tokens from this address; see Retry-After.",
    502: "The storage backend failed after retries, or refused the service's login.",
    503: "Too many uploads in progress after a short wait (see Retry-After), or storage not ready.",
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
    limit = services.spool.limit
    declared = check_declared_length(request, limit, MULTIPART_OVERHEAD)
    boundary = multipart_boundary(request)
    # Streamed only to a backend that would otherwise upload the file a second time after
    # the body (MEGA). For local disk, the spooled copy is hard-linked into place: free.
    stream = (
        declared is not None and supports_streaming(backend) and wants_replayable_streams(backend)
    )

    def intake(copy: SpoolFile | None) -> Intake:
        return MultipartIntake(limit, copy, boundary, declared, stream)

    upload = Upload(request, services, backend, limit + MULTIPART_OVERHEAD, None)
    return await upload.run(intake, with_copy=True)


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
    limit = services.spool.limit
    declared = check_declared_length(request, limit)
    streamed = declared if supports_streaming(backend) else None
    # A streamed body keeps a copy only for a backend that may have to start again.
    with_copy = streamed is None or wants_replayable_streams(backend)

    def intake(copy: SpoolFile | None) -> Intake:
        relay = None
        if streamed is not None:
            relay = BodyRelay(streamed, copy.path if copy else None)
        return Intake(limit, copy, relay)

    upload = Upload(request, services, backend, limit, filename_or_default(filename))
    return await upload.run(intake, with_copy=with_copy)


@contextlib.asynccontextmanager
async def _upload_slot(services: Services) -> AsyncIterator[None]:
    slots = services.upload_slots
    slot = await slots.acquire()
    if slot is None:
        raise ApiError(
            503,
            "too_many_uploads",
            "too many uploads in progress; try again shortly",
            {"Retry-After": RETRY_AFTER_BUSY},
        )
    try:
        yield
    finally:
        slots.release(slot)


class Upload:
    """One upload, from the first byte of the body to the answer.

    Two tasks: one receives the body (and then watches for the client leaving before it
    has its answer), the other stores it: while it arrives through the relay when there
    is one, otherwise from the temporary copy once the body is complete.
    """

    def __init__(
        self,
        request: Request,
        services: Services,
        backend: StorageBackend,
        cap: int,
        name: str | None,
    ) -> None:
        self.request = request
        self.services = services
        self.backend = backend
        self.cap = cap
        self.name = name
        self.intake: Intake | None = None
        self.error: Exception | None = None  # what receiving the body failed with
        self.client_gone = False
        self._decided = anyio.Event()  # a relay exists, or the body ended
        self._received = anyio.Event()

    async def run(
        self, make_intake: Callable[[SpoolFile | None], Intake], with_copy: bool
    ) -> UploadResult:
        async with _upload_slot(self.services), contextlib.AsyncExitStack() as stack:
            copy = None
            if with_copy:
                copy = await stack.enter_async_context(self.services.spool.open())
            intake = self.intake = make_intake(copy)
            stored = await self._store(intake, copy)
        return _result(
            self.request,
            self.services,
            self.backend,
            stored,
            self._name(),
            intake.size,
            intake.sha256(),
        )

    async def _store(self, intake: Intake, copy: SpoolFile | None) -> StoredFile:
        stored: StoredFile | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._receive, intake)
            try:
                if intake.relay is None:
                    await self._decided.wait()
                if intake.relay is not None and self.error is None:
                    stored = await self._store_stream(intake.relay, copy)
                if stored is None:
                    await self._received.wait()
                    if self.error is None and not self.client_gone and copy is not None:
                        stored = await to_thread.run_sync(
                            self.backend.store, copy.path, self._name(), intake.size
                        )
            except Exception as error:  # re-raised below, outside the task group
                failure = error
            finally:
                # The rest of the body, or the client's leaving, no longer matters.
                tasks.cancel_scope.cancel()
        if self.error is not None:
            await self._discard(stored)
            raise self.error
        if self.client_gone:
            await self._discard(stored)
            log.warning(
                "client left before its answer: %s",
                "the stored file was removed" if stored else "the upload was abandoned",
            )
            raise ApiError(400, "client_disconnected", "the client closed the connection")
        if failure is not None:
            raise failure
        assert stored is not None
        return stored

    async def _store_stream(self, relay: BodyRelay, copy: SpoolFile | None) -> StoredFile | None:
        """Store while the body arrives; None when the file must be stored from the copy."""
        backend = self.backend
        assert supports_streaming(backend)
        try:
            return await to_thread.run_sync(backend.store_stream, relay, self._name(), relay.size)
        except PredictionMissed:
            if copy is None:
                raise SourceGone("the body ended before its Content-Length") from None
            log.info("the file part was not the size predicted; storing it from its copy")
            return None
        finally:
            relay.stop()

    async def _receive(self, intake: Intake) -> None:
        limit = self.services.spool.limit
        try:
            await pump(self.request, intake, self.cap, limit, self._after_block)
        except Exception as error:
            self.error = error
            if intake.relay is not None:
                intake.relay.fail(error)
            return
        except BaseException:
            if intake.relay is not None:
                intake.relay.fail(SourceGone("the upload was cancelled"))
            raise
        finally:
            self._decided.set()
            self._received.set()
        # The body is complete; until the answer is sent, a client that leaves must not
        # leave a file behind that nobody has a link to.
        while (await self.request.receive())["type"] != "http.disconnect":
            await anyio.sleep(0.05)  # nothing else is expected; never spin on it
        self.client_gone = True
        if intake.relay is not None:
            intake.relay.fail(SourceGone("the client left before its answer"))

    def _after_block(self) -> None:
        if self.intake is not None and self.intake.relay is not None:
            self._decided.set()

    def _name(self) -> str:
        if self.name is None:
            assert self.intake is not None
            self.name = filename_or_default(self.intake.filename)
        return self.name

    async def _discard(self, stored: StoredFile | None) -> None:
        """Remove a file whose link nobody will receive."""
        if stored is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await to_thread.run_sync(self.backend.delete, stored.handle)
            except Exception as error:  # the answer is an error already
                log.warning("could not remove an unanswered upload: %s", error)


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


def _absolute(link: str, request: Request, public_base_url: str | None) -> str:
    if not link.startswith("/"):
        return link
    base = public_base_url or str(request.base_url).rstrip("/")
    return base + link
