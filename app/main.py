"""The application factory: routers, lifespan, error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from app import __version__
from app.api import downloads, health, uploads
from app.api.deps import Services
from app.api.errors import install_error_handlers
from app.config import Settings
from app.serving.startup import OneLineStartupErrors
from app.spool import Spool
from app.storage.base import StorageBackend
from app.storage.factory import build_backend
from app.storage.local import LocalBackend

log = logging.getLogger(__name__)

DESCRIPTION = """
Receives files over HTTP and stores them in MEGA cloud storage (or on local disk),
answering with a link.

Authenticate uploads with the header `X-Auth-Token: <token>` or
`Authorization: Bearer <token>`. Every error is JSON:
`{"status": "error", "message": "...", "code": "..."}`.
"""


def create_app(settings: Settings, backend: StorageBackend | None = None) -> FastAPI:
    """Build the service for ``settings``; ``backend`` replaces the configured one if given."""
    backend = backend or build_backend(settings)
    spool = Spool(settings.temp_upload_dir, int(settings.max_upload_bytes))
    services = Services(settings=settings, backend=backend, spool=spool)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Each upload holds a worker thread for as long as storing takes, and a relayed
        # one a second while the client outpaces storage; anyio's default of 40 would
        # leave spool writes and /ready waiting behind a full house of uploads.
        limiter = to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 2 * settings.max_concurrent_uploads + 16)
        await to_thread.run_sync(spool.prepare)
        await to_thread.run_sync(backend.start)
        log.info(
            "Paimon-server %s ready: storage=%s, max upload %d bytes, %d concurrent uploads",
            __version__,
            backend.name,
            spool.limit,
            settings.max_concurrent_uploads,
        )
        try:
            yield
        finally:
            await to_thread.run_sync(backend.close)

    app = FastAPI(
        title="Paimon-server", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.services = services
    app.add_middleware(OneLineStartupErrors)
    install_error_handlers(app)
    app.include_router(uploads.router)
    app.include_router(health.router)
    if isinstance(backend, LocalBackend):
        app.include_router(downloads.router)
    return app
