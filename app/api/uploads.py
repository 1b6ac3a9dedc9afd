"""Upload routes: multipart ``POST /upload`` (the existing clients' contract) and raw ``PUT``."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from app.api.deps import Admission, AdmissionDep, Services, ServicesDep
from app.api.errors import error_responses
from app.api.models import UploadResult
from app.intake.body import Intake, pump
from app.intake.errors import SourceGone
from app.intake.filenames import filename_or_default
from app.intake.multipart import FILE_FIELD, MultipartIntake, multipart_boundary
from app.intake.relay import BodyRelay, PredictionMissed
from app.intake.spool import SpoolFile
from app.records.service import PendingUpload, Receipt, UploadCommit
from app.storage.base import StoredFile, StoreExtras

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
) -> UploadResult | JSONResponse:
    answered = await _answer_from_digest(request, services, admission, None)
    if answered is not None:
        return answered
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
) -> UploadResult | JSONResponse:
    answered = await _answer_from_digest(request, services, admission, admission.declared)
    if answered is not None:
        return answered
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


async def _answer_from_digest(
    request: Request, services: Services, admission: Admission, size: int | None
) -> JSONResponse | None:
    """The answer for a file stored already, given before a byte of the body is read: only
    when the client waits for ``100 Continue`` before sending it (so not one byte is sent),
    and only to a caller that may list uploads (it could find the link anyway; anyone else
    must send the bytes before a digest of theirs is trusted)."""
    records = services.records
    if records is None or admission.digest is None:
        return None
    if request.headers.get("expect", "").strip().lower() != "100-continue":
        return None
    if not services.gatekeeper.may_list(admission.caller):
        return None
    caller = admission.caller
    outcome = await to_thread.run_sync(
        records.join_declared, admission.digest, size, caller.name, admission.expires_in
    )
    if outcome is None:
        return None
    log.info("answered from the declared digest: joined stored file %s", outcome.record.id)
    record = outcome.record
    stored = StoredFile(record.id, record.link or "", record.key)
    sha256 = record.sha256 or admission.digest
    result = upload_result(
        request, services, stored, record.name, record.size, sha256, outcome.receipt()
    )
    # The body was never asked for: the connection cannot carry another request.
    return JSONResponse(result.model_dump(mode="json"), headers={"Connection": "close"})


def upload_result(
    request: Request,
    services: Services,
    stored: StoredFile,
    filename: str,
    size: int,
    sha256: str,
    receipt: Receipt | None,
) -> UploadResult:
    """The answer to a stored upload, whichever way it arrived (POST, PUT or tus): the
    contract's fields, then id, delete URL and expiry when the storage keeps records."""
    base = services.settings.public_base_url
    extra: dict[str, Any] = {}
    if receipt is not None:
        # Never from the request's Host header: a path when no public address is set.
        extra["delete_url"] = f"{base or ''}{receipt.delete_path}"
        if receipt.expires is not None:
            extra["expires_at"] = datetime.fromtimestamp(receipt.expires, UTC)
    return UploadResult(
        filename=filename,
        service=services.backend.name,
        link=_absolute(stored.link, request, base),
        size=size,
        sha256=sha256,
        handle=stored.handle,
        id=stored.handle,
        **extra,
    )


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
        # With a backend that keeps records, what the upload becomes is decided once its
        # bytes are in storage: a new file, or a reference to a file with the same bytes.
        records = services.records
        self.commit = UploadCommit(records, self._pending) if records is not None else None

    async def run(
        self, make_intake: Callable[[SpoolFile | None], Intake], with_copy: bool
    ) -> UploadResult:
        async with contextlib.AsyncExitStack() as stack:
            copy = None
            if with_copy:
                copy = await stack.enter_async_context(self.services.spool.open())
            intake = self.intake = make_intake(copy)
            stored = await self._store(intake, copy)
        outcome = self.commit.outcome if self.commit is not None else None
        filename = self._name()
        if outcome is not None and outcome.joined:
            # The same bytes were stored already: the answer is that file, under its name.
            log.info("%d bytes were stored already as %s", intake.size, stored.handle)
            filename = outcome.record.name
        else:
            log.info("stored %d bytes on %s as %s", intake.size, self.backend.name, stored.handle)
        return upload_result(
            self.request,
            self.services,
            stored,
            filename,
            intake.size,
            intake.sha256(),
            outcome.receipt() if outcome is not None else None,
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
                        store = functools.partial(
                            self.backend.store, copy.path, self._name(), intake.size, self._extras()
                        )
                        stored = await to_thread.run_sync(store)
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
        store = functools.partial(
            streaming.store_stream, relay, self._name(), relay.size, self._extras()
        )
        try:
            return await to_thread.run_sync(store)
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
            return
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

    def _extras(self) -> StoreExtras:
        """The file's date as the client gave it, and the commit of a backend that keeps
        records."""
        return StoreExtras(self.admission.mtime, self.commit)

    def _pending(self) -> PendingUpload:
        assert self.intake is not None
        admission = self.admission
        return PendingUpload(
            name=self._name(),
            token=admission.caller.name,
            expires_in=admission.expires_in,
            declared_sha256=admission.digest,
            sha256=self.intake.sha256(),
            size=self.intake.size,
        )

    def _name(self) -> str:
        if self.name is None:
            assert self.intake is not None
            self.name = filename_or_default(self.intake.filename)
        return self.name

    async def _discard(self, stored: StoredFile | None) -> None:
        """Remove a file whose link nobody will receive (only this upload's reference, when
        the same bytes were stored before)."""
        if stored is None:
            return
        undo = self.commit.undo if self.commit is not None else None
        with anyio.CancelScope(shield=True):
            try:
                if undo is not None:
                    await to_thread.run_sync(undo)
                else:
                    await to_thread.run_sync(self.backend.delete, stored.handle)
            except Exception as error:  # the answer is an error already
                log.warning("could not remove an unanswered upload: %s", error)


def _absolute(link: str, request: Request, public_base_url: str | None) -> str:
    if not link.startswith("/"):
        return link
    base = public_base_url or str(request.base_url).rstrip("/")
    return base + link
