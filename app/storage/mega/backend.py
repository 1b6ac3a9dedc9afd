"""``MegaBackend``: the storage backend that puts uploads into a MEGA folder.

It ties the client layer (session, retries, error table) to the data path
(``upload``) and the destination folder (``folders``). Nothing here talks HTTP to the
service's own clients: every failure leaves as a ``StorageError`` whose text the
error table chose, and only the failure's table name is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from mega.crypto import make_id

from app.config import Settings
from app.storage.base import Readiness, StorageError, StorageTimeout, StoredFile

from .client import MegaClient
from .errors import ENOENT, MegaApiError, failure_name, to_storage_error
from .folders import ensure_folder
from .retry import RetryPolicy
from .upload import UploadLimits, export_link, put_node, send_file

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
        started = time.monotonic()
        try:
            client = self._ready_client()
            folder = self._folder()
            # The deadline covers the log-in and folder look-up that came before.
            left = self._limits.deadline_s - (time.monotonic() - started)
            if left <= 0:
                self._check_deadline(started)
            sent = send_file(client, source, size, replace(self._limits, deadline_s=left))
            self._check_deadline(started)
            try:
                handle = put_node(client, folder, sent, filename)
            except MegaApiError as exc:
                if exc.code != ENOENT:
                    raise
                # The folder was removed behind our back: find or create it once more.
                logger.warning("MEGA destination folder is gone; looking it up again")
                handle = put_node(client, self._folder(stale=folder), sent, filename)
            self._check_deadline(started)
            link = export_link(client, handle, sent.node_key)
        except StorageError:
            raise
        except Exception as exc:
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

    def _check_deadline(self, started: float) -> None:
        limit = self._settings.mega_upload_deadline_seconds
        if time.monotonic() - started > limit:
            raise StorageTimeout(f"MEGA did not succeed within {limit:g} s")

