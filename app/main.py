"""The application factory: routers, lifespan, error handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from anyio import to_thread
from fastapi import FastAPI

from app import __version__
from app.access.last_good_tokens import LastGoodTokens
from app.access.tokens import watch_sighup
from app.api import downloads, health, metrics, records, tickets, tus, uploads
from app.api.context import RequestContextMiddleware
from app.api.deps import Services
from app.api.errors import install_error_handlers
from app.api.pages import install_web
from app.config import Settings
from app.intake import running_sha256
from app.intake.relay import tune_allocator
from app.intake.resumable import Recording, ResumableUploads, UploadRecord
from app.intake.resumable_state import build_upload_states
from app.intake.spool import Spool
from app.records.service import PendingUpload, Records, UploadCommit
from app.records.tasks import maintain
from app.serving.startup import OneLineStartupErrors
from app.shared_state import SharedState, build_shared_state
from app.storage.base import Connecting, StorageBackend, StorageError, StorageLoginFailed
from app.storage.factory import build_backend

log = logging.getLogger(__name__)

DESCRIPTION = """
Receives files over HTTP and stores them in MEGA cloud storage (or on local disk),
answering with a link.

Authenticate uploads with the header `X-Auth-Token: <token>` or
`Authorization: Bearer <token>`. Every error is JSON:
`{"status": "error", "message": "...", "code": "..."}`.

**Resumable uploads**: tus 1.0 at `/tus/` with the extensions creation,
creation-with-upload, termination, expiration and checksum (sha1, sha256, sha512); not
creation-defer-length or concatenation (400). Limits: `Tus-Max-Size` (a token may have a
smaller one), a PATCH with `Upload-Checksum` at most `TUS_CHECKSUM_MAX_BYTES`, pieces of
at least the next whole MEGA chunk (1 MiB at most) or the rest of the file, and
`Upload-Expires`. The completing PATCH carries the link in `Paimon-Link`, and
`GET /tus/{id}` answers the same JSON as the other uploads.
"""


# After a failed start-up connection (MEGA slow or unreachable), try again this often.
CONNECT_RETRY_S = 30.0


async def _connect(
    backend: Connecting | None, on_refused: Callable[[StorageLoginFailed], None] | None
) -> bool:
    """Connect the backend in a worker thread until it works, so that the first upload
    does not pay for the log-in; /health answers all along. Refused credentials can never
    start working: ``on_refused`` (the entry point's, which stops the service) is told.
    True once the backend can store (at once for one that needs no connection)."""
    if backend is None:
        return True
    log.info("connecting to storage; /health answers meanwhile")
    while True:
        try:
            await to_thread.run_sync(backend.connect, abandon_on_cancel=True)
        except StorageLoginFailed as refused:
            log.error("storage refused the credentials: %s", refused)
            if on_refused is not None:
                on_refused(refused)
            return False
        except StorageError as error:
            log.warning(
                "storage not reachable yet (%s); trying again in %g s", error, CONNECT_RETRY_S
            )
            await anyio.sleep(CONNECT_RETRY_S)
            continue
        log.info("storage connected")
        return True


async def _connect_then_announce(
    backend: Connecting | None,
    on_refused: Callable[[StorageLoginFailed], None] | None,
    announcement: str,
) -> None:
    # "ready" only once it is true: never before a MEGA log-in that then fails.
    if await _connect(backend, on_refused):
        log.info("%s", announcement)


async def _sweep_uploads(uploads: ResumableUploads, every_s: float) -> None:
    """End expired tus uploads now and then (each worker; the holds keep them apart)."""
    while True:
        await anyio.sleep(every_s)
        try:
            # Not waited for when the service stops; the next sweep finishes what it began.
            await to_thread.run_sync(uploads.sweep, time.time(), abandon_on_cancel=True)
        except Exception as error:  # Redis away, a disk error: the next round tries again
            log.warning("could not sweep expired tus uploads: %s", error)


def _resumable_uploads(services: Services, shared: SharedState) -> ResumableUploads | None:
    """The tus uploads, when the backend declares it can keep uploads open."""
    resumable = services.capabilities.resumable
    if resumable is None:
        return None
    if not running_sha256.available():
        log.warning("tus uploads are off: this Python has no OpenSSL SHA-256 to resume")
        return None
    settings = services.settings
    # Open uploads' records hold the file's key and upload URL: sealed in Redis with the
    # MEGA password, as the session is (app/shared_state.py, SealedBlobs).
    secret = None
    if settings.storage_backend == "mega" and settings.mega.password is not None:
        secret = settings.mega.password.get_secret_value().encode()
    states = build_upload_states(shared, settings.tus.state_dir, secret)
    return ResumableUploads(
        resumable,
        services.backend.name,
        states,
        services.gatekeeper.allowances,
        settings.tus.expiry_seconds,
        _recording(services.records),
    )


def _recording(records: Records | None) -> Recording | None:
    """A finished tus upload is committed like any upload (its record, dedup, expiry),
    and terminating it takes it back as its delete URL does."""
    if records is None:
        return None

    def commit_for(upload: UploadRecord, sha256: str) -> UploadCommit:
        pending = PendingUpload(
            name=upload.filename,
            token=upload.token,
            expires_in=upload.expires_in,
            declared_sha256=None,
            sha256=sha256,
            size=upload.size,
        )
        return UploadCommit(records, lambda: pending)

    return Recording(commit_for, records.take_back)


def create_app(
    settings: Settings,
    backend: StorageBackend | None = None,
    on_refused: Callable[[StorageLoginFailed], None] | None = None,
    last_good_tokens: LastGoodTokens | None = None,
) -> FastAPI:
    """Build the service for ``settings``; ``backend`` replaces the configured one if given.
    ``on_refused`` is called when the storage refuses the credentials at start-up.
    ``last_good_tokens``: the instance's running tokens, when this is a gunicorn worker.
    Raises TokensFileError when TOKENS_FILE cannot be used and there is no such fallback."""
    # The shared state first: the MEGA backend keeps its session and log-in lock in it.
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    shared = build_shared_state(redis_url)
    backend = backend or build_backend(settings, shared)
    spool = Spool(settings.intake.temp_upload_dir)
    services = Services(
        settings=settings,
        backend=backend,
        spool=spool,
        shared=shared,
        last_good_tokens=last_good_tokens,
    )
    resumable = _resumable_uploads(services, shared)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Each upload holds a worker thread for as long as storing takes, and a relayed
        # one a second while the client outpaces storage; anyio's default of 40 would
        # leave spool writes and /ready waiting behind a full house of uploads.
        limiter = to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(
            limiter.total_tokens, 2 * settings.intake.max_concurrent_uploads + 16
        )
        tune_allocator()  # large body buffers from the heap, not a fresh mmap each
        await to_thread.run_sync(spool.prepare)
        await to_thread.run_sync(backend.start)
        stop_watching = watch_sighup(services.tokens.request_reload)
        ready = (
            f"Paimon-server {__version__} ready: storage={backend.name} in {backend.location()}, "
            f"max upload {int(settings.access.max_upload_bytes)} bytes, "
            f"{settings.intake.max_concurrent_uploads} concurrent uploads"
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                _connect_then_announce, services.capabilities.connect, on_refused, ready
            )
            if services.records is not None or services.capabilities.space is not None:
                tasks.start_soon(
                    maintain,
                    services.records,
                    services.space,
                    settings.records.sweep_interval_seconds,
                    settings.records.index_refresh_seconds,
                )
            if resumable is not None:
                await to_thread.run_sync(resumable.states.prepare)
                every_s = min(60.0, max(0.5, resumable.expiry_s / 4))
                tasks.start_soon(_sweep_uploads, resumable, every_s)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                stop_watching()
                await to_thread.run_sync(backend.close)
                await to_thread.run_sync(services.shared.close)

    # /docs is served by install_web with local assets; FastAPI's own pages use a CDN.
    app = FastAPI(
        title="Paimon-server",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.resumable = resumable
    app.add_middleware(OneLineStartupErrors)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(uploads.router)
    app.include_router(tickets.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Routes follow the backend's declared capabilities; the OpenAPI document too.
    app.include_router(
        downloads.router, include_in_schema=services.capabilities.download is not None
    )
    app.include_router(records.router, include_in_schema=services.records is not None)
    if resumable is not None:
        app.include_router(tus.router)
        app.add_middleware(tus.TusProtocol)
    install_web(app, settings)
    return app
