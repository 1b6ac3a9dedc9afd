"""Routes on stored uploads: list them, delete them, take their links away and give them
back, and the uploader's own delete URL.

Who may do what is decided by ``Gatekeeper.record_scope``: a token with ``can_manage``
acts on every upload, one with ``can_list`` on its own, any other (``AUTH_TOKEN``, every
ticket) on none. The delete URL needs no token: its secret is the credential, for that
one upload only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request

from app.api.deps import CallerDep, Services, ServicesDep
from app.api.errors import NOT_SUPPORTED, error_responses
from app.api.models import Deleted, LinkState, UploadPage, UploadRow
from app.records import Records
from app.records.index import Row

router = APIRouter(tags=["uploads"])

FileId = Annotated[str, Path(description="The file's id (`id` in the upload's answer).")]


def _records(services: Services, links: bool = False) -> Records:
    """The backend's records, or 501 when it declares it keeps none (or has no links)."""
    records = services.records
    if records is None or (links and services.capabilities.links is None):
        what = "public links that can be changed" if links else "records of uploads"
        raise NOT_SUPPORTED(f"the storage backend {services.backend.name!r} keeps no {what}")
    return records


def _time(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _link(services: Services, link: str | None) -> str | None:
    """A link as clients get it: a path of this service's joined to PUBLIC_BASE_URL."""
    if link is not None and link.startswith("/"):
        return (services.settings.public_base_url or "") + link
    return link


def _row(services: Services, row: Row) -> UploadRow:
    record, reference = row.record, row.reference
    return UploadRow(
        id=record.id,
        name=record.name,
        size=record.size,
        sha256=record.sha256,
        link=_link(services, record.link),
        created_at=datetime.fromtimestamp(reference.created if reference else record.created, UTC),
        expires_at=_time(reference.expires if reference else None),
        token=reference.token if reference else None,
        service=services.backend.name,
    )


@router.get(
    "/uploads",
    response_model=UploadPage,
    responses=error_responses("params", "token", "stored", "manage"),
    summary="List uploads, newest first (a token with can_list: its own; can_manage: all)",
)
async def list_uploads(
    services: ServicesDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Uploads per page.")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the last page.")] = None,
    token: Annotated[str | None, Query(description="Only this token's uploads.")] = None,
    service: Annotated[str | None, Query(description="Only uploads to this backend.")] = None,
) -> UploadPage:
    records = _records(services)
    scope = services.gatekeeper.record_scope(caller)
    if scope is not None and token is not None and token != scope:
        return UploadPage(uploads=[], next_cursor=None)  # never anyone else's
    name = services.backend.name
    if service is not None and service.strip().lower() != name:
        return UploadPage(uploads=[], next_cursor=None)
    rows, next_cursor = await to_thread.run_sync(records.page, scope or token, limit, cursor)
    return UploadPage(uploads=[_row(services, row) for row in rows], next_cursor=next_cursor)


@router.delete(
    "/uploads/{file_id}",
    response_model=Deleted,
    responses=error_responses("token", "stored", "manage"),
    summary="Delete an upload: its file and link (can_manage), or the caller's own uploads",
)
async def delete_upload(file_id: FileId, services: ServicesDep, caller: CallerDep) -> Deleted:
    records = _records(services)
    scope = services.gatekeeper.record_scope(caller)
    removed = await to_thread.run_sync(records.delete, file_id, scope)
    return Deleted(id=file_id, removed=removed)  # type: ignore[arg-type]


async def file_link(
    request: Request, file_id: FileId, services: ServicesDep, caller: CallerDep
) -> LinkState:
    """DELETE takes the file's public link away (the file stays); POST gives it one again."""
    records = _records(services, links=True)
    scope = services.gatekeeper.record_scope(caller)
    present = request.method == "POST"
    record = await to_thread.run_sync(records.set_link, file_id, scope, present)
    return LinkState(id=record.id, link=_link(services, record.link))


for _method, _summary in (
    ("DELETE", "Revoke a file's public link (the file stays)"),
    ("POST", "Give a file a public link again (a new one after a revoke)"),
):
    router.add_api_route(
        "/uploads/{file_id}/link",
        file_link,
        methods=[_method],
        response_model=LinkState,
        responses=error_responses("token", "stored", "manage"),
        summary=_summary,
        operation_id=f"{_method.lower()}_file_link",
    )


@router.delete(
    "/delete/{file_id}/{key}/{secret}",
    response_model=Deleted,
    responses=error_responses("stored"),
    summary="Take back one upload with its delete URL (no token: the URL is the credential)",
)
async def delete_with_secret(
    file_id: FileId, key: str, secret: str, services: ServicesDep
) -> Deleted:
    records = _records(services)
    removed = await to_thread.run_sync(records.delete_by_secret, file_id, key, secret)
    return Deleted(id=file_id, removed=removed)  # type: ignore[arg-type]
