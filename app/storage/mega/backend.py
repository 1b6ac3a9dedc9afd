"""``MegaBackend``: the storage backend that puts uploads into a MEGA folder.

It ties the client (transport, session, log-in) to the data path (``upload``) and the
destination folder (``folders``). Nothing here talks HTTP to the service's own clients:
every failure leaves as a ``StorageError`` whose text the catalogue chose, and only the
failure's name is logged.

The log-in happens at start-up (``connect``, run in the background by the app), so the
first upload does not pay for it; uploads that arrive while it runs wait at most
``login_wait_s`` and are then answered 503 "the service is logging in to MEGA".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from mega.crypto import make_id

from app.storage.base import BodyStream, Capabilities, Readiness, StorageError, StoredFile

from .client import MegaClient
from .errors import ENOENT, MegaApiError, MegaLoggingIn, failure_name, to_storage_error
from .folders import ensure_folder
from .resumable import MegaResumable
from .retry import Deadline
from .session import FileSessionStore, SessionStore, account_key
from .settings import MegaSettings
from .upload import (
    SentFile,
    SourceFailed,
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
    """Stores files in the configured folder of the configured MEGA account."""

    name = "mega"

    def __init__(self, settings: MegaSettings, store: SessionStore | None = None) -> None:
        """``store`` keeps the session and the log-in and folder locks; by default the
        session file."""
        self._settings = settings
        self._session_store = store or FileSessionStore(
            settings.session_file, account_key(settings.email, settings.api_url)
        )
        policy = settings.retry_policy()
        self._limits = UploadLimits(
            chunk_policy=policy,
            region_bytes=settings.upload_region_bytes,
            parallel=settings.upload_parallel,
            restarts=settings.upload_restarts,
            deadline_s=settings.upload_deadline_s,
            window_bytes=settings.upload_window_bytes,
        )
        self._client: MegaClient | None = None
        self._folder_id: str | None = None
        self._folder_lock = threading.Lock()
        self._readiness_lock = threading.Lock()
        # tus: an upload kept open across requests, finished through the same ``_store``.
        self._resumable = MegaResumable(
            lambda deadline: self._ready_client(deadline=deadline), self._limits, self._store
        )

    # -- StorageBackend ------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        # MEGA may ask for an upload to start again on a fresh URL: streams restart.
        return Capabilities(
            connect=self, stream=self, restarts_streams=True, resumable=self._resumable
        )

    def start(self) -> None:
        """Build the client; no network I/O (``connect`` logs in, in the background)."""
        self._settings.session_file.parent.mkdir(parents=True, exist_ok=True)
        self._client = MegaClient.from_settings(self._settings, self._session_store)

    def connect(self) -> None:
        """Log in (or check the stored or given session) and find the folder."""
        try:
            self._folder(Deadline(self._settings.login_deadline_s))
        except StorageError:
            raise
        except Exception as exc:
            raise to_storage_error(exc) from None

    def store(self, source: Path, filename: str, size: int) -> StoredFile:
        return self._store(
            lambda client, deadline: send_file(client, source, size, self._limits, deadline),
            filename,
            size,
        )

    def store_stream(self, body: BodyStream, filename: str, size: int) -> StoredFile:
        """Store ``size`` bytes read from ``body`` while they arrive (no temporary file).

        The deadline does not count time spent waiting for the body's bytes (it bounds
        MEGA's work). What ``body.read`` raises (the client left) is re-raised unchanged;
        no node is made, so nothing is left in the drive (MEGA drops an upload that never
        completes). A restart MEGA asks for replays the body from its copy
        (``body.rewind``); a body without one ends in a 502.
        """
        try:
            return self._store(
                lambda client, deadline: send_stream(client, body, size, self._limits, deadline),
                filename,
                size,
            )
        except SourceFailed as failed:
            # The API layer logs why (the client left, the file was another size).
            logger.debug("upload of %d bytes abandoned: its body stopped arriving", size)
            raise failed.error from None

    def _store(
        self,
        send: Callable[[MegaClient, Deadline], SentFile],
        filename: str,
        size: int,
    ) -> StoredFile:
        # One deadline for the whole upload: log-in and folder look-up, the data, u/p/l.
        deadline = Deadline(self._limits.deadline_s)
        try:
            client = self._ready_client(deadline=deadline)
            folder = self._folder(deadline)
            sent = send(client, deadline)
            try:
                handle = put_node(client, folder, sent, filename, deadline)
            except MegaApiError as exc:
                if exc.code != ENOENT:
                    raise
                # The folder was removed behind our back: find or create it once more.
                logger.warning("MEGA destination folder is gone; looking it up again")
                folder = self._folder(deadline, stale=folder)
                handle = put_node(client, folder, sent, filename, deadline)
            link = export_link(client, handle, sent.node_key, deadline)
        except (StorageError, SourceFailed):
            raise
        except Exception as exc:
            failure = to_storage_error(exc)
            logger.warning(
                "MEGA upload of %d bytes failed: %s (%s)", size, failure_name(exc), failure
            )
            raise failure from None
        return StoredFile(handle=handle, link=link)

    def readiness(self) -> Readiness:
        """Logged in and the folder there; never starts a log-in of its own while one runs."""
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
            self._ready_client(wait=False)
        except Exception as exc:
            return Readiness(False, str(to_storage_error(exc)))
        try:
            self._folder(Deadline(self._limits.chunk_policy.deadline_s))
        except Exception as exc:
            reason = f"MEGA folder {self._settings.folder!r} is not available"
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

    def _ready_client(self, wait: bool = True, deadline: Deadline | None = None) -> MegaClient:
        """The client with a session. ``wait=False``: a log-in running elsewhere is reported
        at once instead of waited for (probes)."""
        if self._client is None:  # used without start(), e.g. from a script
            self.start()
        assert self._client is not None
        if not wait and not self._client.logged_in and self._client.login_running:
            raise MegaLoggingIn()
        self._client.ensure_login(deadline)
        return self._client

    def _folder(self, deadline: Deadline, stale: str | None = None) -> str:
        """The destination folder's node id, cached; ``stale`` is an id MEGA no longer knows."""
        folder = self._folder_id
        if folder is not None and folder != stale:
            return folder
        client = self._ready_client()
        with self._folder_lock:
            if self._folder_id is None or self._folder_id == stale:
                self._folder_id = ensure_folder(
                    client,
                    self._settings.folder,
                    self._session_store.folder_locked,
                    FOLDER_LOCK_TIMEOUT_S,
                    deadline,
                )
            return self._folder_id
