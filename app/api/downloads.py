"""Download route for the local backend, so the links it returns work."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from app.api.errors import ApiError
from app.api.models import ErrorBody
from app.storage.local import LocalBackend

router = APIRouter(tags=["downloads"])


# HEAD answers like GET without the body (size, type, disposition), as clients that
# check a link before fetching it expect; one operation in the API document.
@router.head("/files/{handle}/{filename}", include_in_schema=False)
@router.get(
    "/files/{handle}/{filename}",
    response_class=FileResponse,
    responses={404: {"model": ErrorBody, "description": "No such file."}},
    summary="Download a file stored by the local backend (the upload's `link`)",
)
async def download(handle: str, filename: str, request: Request) -> FileResponse:
    backend = request.app.state.services.backend
    path = backend.locate(handle, filename) if isinstance(backend, LocalBackend) else None
    if path is None:
        raise ApiError(404, "not_found", "no such file")
    # Always a download, never rendered: an uploaded HTML file must not run as our origin.
    return FileResponse(
        path,
        filename=filename,
        media_type="application/octet-stream",
        content_disposition_type="attachment",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )
