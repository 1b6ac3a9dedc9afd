"""Probes and service information. None of these needs a token."""

from __future__ import annotations

import anyio
from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import __version__
from app.api.deps import ServicesDep
from app.api.errors import NOT_READY, error_responses
from app.api.models import Health, Ping, ReadyState, ServiceStatus, StorageSpace

router = APIRouter(tags=["service"])
READY_TIMEOUT_SECONDS = 10


@router.get("/ping", response_model=Ping, summary="The existing clients' liveness check")
async def ping() -> Ping:
    return Ping()


@router.get("/status", response_model=ServiceStatus, summary="Version and supported services")
async def status(services: ServicesDep) -> ServiceStatus:
    name = services.backend.name
    return ServiceStatus(version=__version__, services=[name], default_service=name)


@router.get("/health", response_model=Health, summary="Liveness: no I/O, always fast")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=ReadyState,
    responses=error_responses("ready"),
    summary="Readiness: 200 only when the storage backend can take uploads",
)
async def ready(services: ServicesDep) -> ReadyState | JSONResponse:
    backend = services.backend
    reason = ""
    with anyio.move_on_after(READY_TIMEOUT_SECONDS):
        for check in (services.spool.readiness, backend.readiness):
            state = await to_thread.run_sync(check, abandon_on_cancel=True)
            if not state.ready:
                reason = state.reason or "the storage backend is not ready"
                break
        else:
            # Ready even without Redis: uploads go on with per-process limits (README).
            problem = await to_thread.run_sync(services.shared.problem, abandon_on_cancel=True)
            shared = problem or services.shared.kind
            return ReadyState(
                status="ready", service=backend.name, shared_state=shared, storage=_space(services)
            )
    reason = reason or "the storage backend did not answer the readiness check in time"
    return NOT_READY.response(reason)


def _space(services: ServicesDep) -> StorageSpace | None:
    """How full the storage is, as last known; ready stays ready when it is full (uploads
    that cannot fit are refused one by one, with 507)."""
    space = services.space.known
    if space is None:
        return None
    percent = round(100 * space.used / space.total, 2) if space.total else 100.0
    return StorageSpace(
        used_bytes=space.used,
        total_bytes=space.total,
        free_bytes=space.free,
        used_percent=percent,
    )
