"""Download route for the local backend, so the links it returns work."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.deps import ServicesDep
from app.api.errors import NOT_FOUND, NOT_SUPPORTED, error_responses

router = APIRouter(tags=["downloads"])


# HEAD answers like GET without the body (size, type, disposition), as clients that
# check a link before fetching it expect; one operation in the API document.
@router.head("/files/{handle}/{filename}", include_in_schema=False)
@router.get(
    "/files/{handle}/{filename}",
    response_class=FileResponse,
    responses=error_responses("download"),
    summary="Download a file stored by the local backend (the upload's `link`)",
)
async def download(handle: str, filename: str, services: ServicesDep) -> FileResponse:
    downloads = services.capabilities.download
    if downloads is None:
        raise NOT_SUPPORTED(
            f"the storage backend {services.backend.name!r} does not serve downloads; "
            "its links point at the storage itself"
        )
    path = downloads.locate(handle, filename)
    if path is None:
        raise NOT_FOUND("no such file")
    # Always a download, never rendered: an uploaded HTML file must not run as our origin.
    return FileResponse(
        path,
        filename=filename,
        media_type="application/octet-stream",
        content_disposition_type="attachment",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )
