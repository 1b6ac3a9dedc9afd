"""``MegaBackend``: the storage backend that puts uploads into a MEGA folder.

It ties the client layer (session, retries, error table) to the data path
(``upload``) and the destination folder (``folders``). Nothing here talks HTTP to the
service's own clients: every failure leaves as a ``StorageError`` whose text the
error table chose, and only the failure's table name is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from mega.crypto import make_id

from app.config import Settings
from app.storage.base import BodyStream, Readiness, StorageError, StoredFile

from .client import MegaClient
from .errors import (
    ENOENT,
    MegaApiError,
    MegaDeadlineExceeded,
    failure_name,
    to_storage_error,
)
from .folders import ensure_folder
from .retry import RetryPolicy
from .upload import (
    SentFile,
    SourceFailed,
    UploadClock,
    UploadLimits,
    export_link,
    put_node,
    send_file,
    send_stream,
)

logger = logging.getLogger(__name__)

# Folder creation waits at most this long for another process doing the same.
FOLDER_LOCK_TIMEOUT_S = 60.0


class MegaBackend:
    """Stores files in ``settings.mega_folder`` of the configured MEGA account."""

    name = "mega"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        policy = RetryPolicy(
            attempts=settings.mega_retry_attempts,
            # One API request never retries for longer than a whole upload may take.
            deadline_s=min(120.0, settings.mega_upload_deadline_seconds),
            initial_s=settings.mega_retry_initial_seconds,
            max_s=settings.mega_retry_max_seconds,
        )
        self._limits = UploadLimits(
            region_bytes=int(settings.mega_upload_region_bytes),
            parallel=settings.mega_upload_parallel,
            restarts=settings.mega_upload_restarts,
            deadline_s=settings.mega_upload_deadline_seconds,
            connect_timeout_s=settings.mega_connect_timeout,
            read_timeout_s=settings.mega_read_timeout,
            chunk_policy=RetryPolicy(
                attempts=settings.mega_retry_attempts,
                deadline_s=settings.mega_upload_deadline_seconds,
                initial_s=settings.mega_retry_initial_seconds,
                max_s=settings.mega_retry_max_seconds,
            ),
        )
        self._policy = policy
        self._client: MegaClient | None = None
        self._folder_id: str | None = None
        self._folder_lock = threading.Lock()
        self._readiness_lock = threading.Lock()
        self._folder_lock_file = settings.mega_session_file.with_name(
            settings.mega_session_file.name + ".folder.lock"
        )

    # -- StorageBackend ------------------------------------------------------------

    def start(self) -> None:
        """Build the client; no network I/O (MEGA may be down at boot, log-in is lazy)."""
        self._settings.mega_session_file.parent.mkdir(parents=True, exist_ok=True)
        self._client = self._new_client()

    def store(self, source: Path, filename: str, size: int) -> StoredFile:
        return self._store(
            lambda client, clock: send_file(client, source, size, self._limits, clock),
            filename,
            size,
        )

    def store_stream(self, body: BodyStream, filename: str, size: int) -> StoredFile:
        """Store ``size`` bytes read from ``body`` while they arrive (no temporary file).

        The deadline covers receiving the body too. What ``body.read`` raises (the client
        left) is re-raised unchanged; no node is made, so nothing is left in the drive
        (MEGA drops an upload that never completes). A restart MEGA asks for cannot be
        done from a stream and ends in a 502 (see ``upload.send``).
        """
        try:
            return self._store(
                lambda client, clock: send_stream(client, body, size, self._limits, clock),
                filename,
                size,
            )
        except SourceFailed as failed:
            logger.info("upload of %d bytes abandoned: its body stopped arriving", size)
            raise failed.error from None

    def _store(
        self,
        send: Callable[[MegaClient, UploadClock], SentFile],
        filename: str,
        size: int,
    ) -> StoredFile:
        # One clock for the whole upload: log-in and folder look-up, the data, u/p/l.
        clock = UploadClock(self._limits.deadline_s)
        try:
            client = self._ready_client()
            folder = self._folder()
            clock.check()
            sent = send(client, clock)
            clock.check()
            try:
                handle = put_node(client, folder, sent, filename, clock.remaining())
            except MegaApiError as exc:
                if exc.code != ENOENT:
                    raise
                # The folder was removed behind our back: find or create it once more.
                logger.warning("MEGA destination folder is gone; looking it up again")
                folder = self._folder(stale=folder)
                handle = put_node(client, folder, sent, filename, clock.remaining())
            link = export_link(client, handle, sent.node_key, clock.remaining())
        except (StorageError, SourceFailed):
            raise
        except Exception as exc:
            if isinstance(exc, MegaDeadlineExceeded):
                # An API call cut to what was left reports that share; the client is told
                # the upload's whole deadline.
                exc = MegaDeadlineExceeded(exc.attempts, clock.seconds, exc.last)
            failure = to_storage_error(exc)
            logger.warning(
                "MEGA upload of %d bytes failed: %s (%s)", size, failure_name(exc), failure
            )
            raise failure from None
        return StoredFile(handle=handle, link=link)

    def readiness(self) -> Readiness:
        """Logged in (lazily, unless a refused log-in is cooling down) and the folder there."""
        # Probes come every few seconds; while MEGA is slow or down one check may retry
        # for long. Later probes answer at once instead of queueing more threads behind it.
        if not self._readiness_lock.acquire(blocking=False):
            return Readiness(False, "checking MEGA: a log-in or folder look-up is in progress")
        try:
            return self._check_readiness()
        finally:
            self._readiness_lock.release()

    def _check_readiness(self) -> Readiness:
        try:
            self._ready_client()
        except Exception as exc:
            return Readiness(False, str(to_storage_error(exc)))
        try:
            self._folder()
        except Exception as exc:
            reason = f"MEGA folder {self._settings.mega_folder!r} is not available"
            return Readiness(False, f"{reason}: {to_storage_error(exc)}")
        return Readiness(True)

    def delete(self, handle: str) -> None:
        try:
            self._ready_client().api({"a": "d", "n": handle, "i": make_id(10)})
        except MegaApiError as exc:
            if exc.code == ENOENT:
                return  # already gone
            raise to_storage_error(exc) from None
        except StorageError:
            raise
        except Exception as exc:
            raise to_storage_error(exc) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- internals -------------------------------------------------------------------

    def _new_client(self) -> MegaClient:
        settings = self._settings
        assert settings.mega_email is not None and settings.mega_password is not None
        return MegaClient(
            settings.mega_api_url,
            settings.mega_email,
            settings.mega_password.get_secret_value(),
            settings.mega_session_file,
            connect_timeout=settings.mega_connect_timeout,
            read_timeout=settings.mega_read_timeout,
            policy=self._policy,
            # Every upload's region POSTs at once, with room for the API calls.
            pool_size=max(16, settings.mega_upload_parallel * settings.max_concurrent_uploads + 4),
        )

    def _ready_client(self) -> MegaClient:
        if self._client is None:  # used without start(), e.g. from a script
            self.start()
        assert self._client is not None
        self._client.ensure_login()
        return self._client

    def _folder(self, stale: str | None = None) -> str:
        """The destination folder's node id, cached; ``stale`` is an id MEGA no longer knows."""
        folder = self._folder_id
        if folder is not None and folder != stale:
            return folder
        with self._folder_lock:
            if self._folder_id is None or self._folder_id == stale:
                assert self._client is not None
                self._folder_id = ensure_folder(
                    self._client,
                    self._settings.mega_folder,
                    self._folder_lock_file,
                    FOLDER_LOCK_TIMEOUT_S,
                )
            return self._folder_id
