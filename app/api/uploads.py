"""Upload routes: multipart ``POST /upload`` (the existing clients' contract) and raw ``PUT``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Annotated

import anyio
from anyio import to_thread
from fastapi import APIRouter, Path, Request

from app.api.deps import Admission, AdmissionDep, Services, ServicesDep
from app.api.errors import error_responses
from app.api.models import UploadResult
from app.intake.body import Intake, pump
from app.intake.errors import SourceGone
from app.intake.filenames import filename_or_default
from app.intake.multipart import FILE_FIELD, MultipartIntake, multipart_boundary
from app.intake.relay import BodyRelay, PredictionMissed
from app.intake.spool import SpoolFile
from app.storage.base import StoredFile

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

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
    responses=error_responses("params", "token", "caller", "upload", "multipart"),
    openapi_extra=_MULTIPART_BODY,
    summary="Upload a file as multipart/form-data (field `file`)",
)
async def upload_form(
    request: Request, services: ServicesDep, admission: AdmissionDep
) -> UploadResult:
    boundary = multipart_boundary(request.headers.get("content-type", ""))
    length = request.headers.get("content-length")
    capabilities = admission.backend.capabilities()
    # Streamed only to a backend that would otherwise upload the file a second time after
    # the body (MEGA). For local disk, the spooled copy is hard-linked into place: free.
    stream = (
        length is not None and capabilities.stream is not None and capabilities.restarts_streams
    )

    def intake(copy: SpoolFile | None) -> Intake:
        return MultipartIntake(
            admission.limit,
            copy,
            boundary,
            int(length) if length is not None else None,
            stream,
            admission.grant,
        )

    upload = Upload(request, services, admission)
    return await upload.run(intake, with_copy=True)


@router.put(
    "/files/{filename}",
    response_model=UploadResult,
    responses=error_responses("params", "token", "caller", "upload"),
    openapi_extra=_RAW_BODY,
    summary="Upload the raw request body as a file (`curl -T file URL`)",
)
async def upload_raw(
    request: Request,
    services: ServicesDep,
    admission: AdmissionDep,
    filename: Annotated[str, Path(description="Name to store the file under.")],
) -> UploadResult:
    capabilities = admission.backend.capabilities()
    streamed = admission.declared if capabilities.stream is not None else None
    # A streamed body keeps a copy only for a backend that may have to start again.
    with_copy = streamed is None or capabilities.restarts_streams

    def intake(copy: SpoolFile | None) -> Intake:
        relay = None
        if streamed is not None:
            relay = BodyRelay(streamed, copy.path if copy else None)
        return Intake(admission.limit, copy, relay, admission.grant)

    upload = Upload(request, services, admission)
    return await upload.run(intake, with_copy=with_copy)


class Upload:
    """One upload, from the first byte of the body to the answer.

    Two tasks: one receives the body (and then watches for the client leaving before it
    has its answer), the other stores it: while it arrives through the relay when there
    is one, otherwise from the temporary copy once the body is complete.
    """

    def __init__(self, request: Request, services: Services, admission: Admission) -> None:
        self.request = request
        self.services = services
        self.admission = admission
        self.backend = admission.backend
        self.name = admission.filename
        self.intake: Intake | None = None
        self.error: Exception | None = None  # what receiving the body failed with
        self.client_gone = False
        self._decided = anyio.Event()  # a relay exists, or the body ended
        self._received = anyio.Event()

    async def run(
        self, make_intake: Callable[[SpoolFile | None], Intake], with_copy: bool
    ) -> UploadResult:
        async with contextlib.AsyncExitStack() as stack:
            copy = None
            if with_copy:
                copy = await stack.enter_async_context(self.services.spool.open())
            intake = self.intake = make_intake(copy)
            stored = await self._store(intake, copy)
        log.info("stored %d bytes on %s as %s", intake.size, self.backend.name, stored.handle)
        return upload_result(
            self.request,
            self.services,
            self.backend.name,
            self._name(),
            stored,
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
            raise SourceGone()
        if failure is not None:
            raise failure
        assert stored is not None
        return stored

    async def _store_stream(self, relay: BodyRelay, copy: SpoolFile | None) -> StoredFile | None:
        """Store while the body arrives; None when the file must be stored from the copy."""
        streaming = self.backend.capabilities().stream
        assert streaming is not None  # a relay is only made for a backend that streams
        try:
            return await to_thread.run_sync(streaming.store_stream, relay, self._name(), relay.size)
        except PredictionMissed:
            if copy is None:
                raise SourceGone("the body ended before its Content-Length") from None
            log.info("the file part was not the size predicted; storing it from its copy")
            return None
        finally:
            relay.stop()

    async def _receive(self, intake: Intake) -> None:
        try:
            await pump(self.request.stream(), intake, self.services.pace, self._after_block)
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


def upload_result(
    request: Request,
    services: Services,
    service: str,
    filename: str,
    stored: StoredFile,
    size: int,
    sha256: str,
) -> UploadResult:
    """The answer to a stored upload, whichever way it arrived (POST, PUT or tus)."""
    return UploadResult(
        filename=filename,
        service=service,
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
