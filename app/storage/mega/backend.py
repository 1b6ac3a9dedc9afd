"""``MegaBackend``: the storage backend that puts uploads into a MEGA folder.

It ties the client (transport, session, log-in) to the data path (``upload``) and the
destination folder (``folders``). Nothing here talks HTTP to the service's own clients:
every failure leaves as a ``StorageError`` whose text the catalogue chose, and only the
failure's name is logged.

The log-in happens at start-up (``connect``, run in the background by the app), so the
first upload does not pay for it; uploads that arrive while it runs wait at most
``login_wait_s`` and are then answered 503 "the service is logging in to MEGA".

The destination folder is found once and looked up again at least every
``FOLDER_CHECK_S``, and after a node landed outside it: MEGA puts a 'p' into a removed
folder into the rubbish bin, and takes one into a trashed folder as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from mega.crypto import a32_to_base64

from app.config import MegaSettings
from app.storage.base import (
    NO_EXTRAS,
    BodyStream,
    Capabilities,
    Readiness,
    StorageError,
    StoredFile,
    StoreExtras,
)

from .client import MegaClient
from .errors import (
    ENOENT,
    MegaApiError,
    MegaLoggingIn,
    StreamCannotRestart,
    failed,
    to_storage_error,
)
from .folders import ensure_folder
from .records import MegaRecords
from .resumable import MegaResumable
from .retry import Deadline
from .session import FileSessionStore, SessionStore, account_key
from .upload import (
    PlacedNode,
    SentFile,
    SourceFailed,
    UploadLimits,
    export_link,
    put_file_node,
    send_file,
    send_stream,
)

logger = logging.getLogger(__name__)

# Folder creation waits at most this long for another process doing the same.
FOLDER_LOCK_TIMEOUT_S = 60.0
# The destination folder is looked up again (from the root, by name) at least this often:
# MEGA takes uploads into a folder someone moved to the rubbish bin like into any other,
# so only looking tells. A look reads the account's whole node list, hence not per upload.
FOLDER_CHECK_S = 300.0


class MegaBackend:
    """Stores files in the configured folder of the configured MEGA account."""

    name = "mega"

    def __init__(
        self,
        settings: MegaSettings,
        store: SessionStore | None = None,
        *,
        pool_size: int = 16,
        folder_check_s: float = FOLDER_CHECK_S,
    ) -> None:
        """``store`` keeps the session and the log-in and folder locks; by default the
        session file. ``pool_size``: HTTP connections to keep. The folder is looked up
        again at least every ``folder_check_s``."""
        assert settings.email is not None  # checked at start-up
        self._settings = settings
        self._session_store = store or FileSessionStore(
            settings.session_file, account_key(settings.email, settings.api_url)
        )
        self._pool_size = pool_size
        self._limits = UploadLimits.from_settings(settings)
        self._client: MegaClient | None = None
        self._folder_id: str | None = None
        self._folder_check_s = folder_check_s
        self._folder_checked = 0.0  # time.monotonic() of the last look
        self._folder_lock = threading.Lock()
        self._readiness_lock = threading.Lock()
        self._records = MegaRecords(
            self._ready_client,
            lambda: self._folder(Deadline(self._limits.chunk_policy.deadline_s)),
            settings.session_file.parent / "locks",
        )
        # tus: an upload kept open across requests, finished through the same ``_store``.
        self._resumable = MegaResumable(
            lambda deadline: self._ready_client(deadline=deadline), self._limits, self._store
        )

    # -- StorageBackend ------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        # MEGA may ask for an upload to start again on a fresh URL: streams restart.
        records = self._records
        return Capabilities(
            connect=self,
            stream=self,
            restarts_streams=True,
            records=records,
            links=records,
            space=records,
            resumable=self._resumable,
        )

    def location(self) -> str:
        return f"the folder {self._settings.folder!r} of the account {self._settings.email}"

    def start(self) -> None:
        """Build the client; no network I/O (``connect`` logs in, in the background)."""
        self._settings.session_file.parent.mkdir(parents=True, exist_ok=True)
        self._client = MegaClient.from_settings(
            self._settings, self._session_store, self._pool_size
        )

    def connect(self) -> None:
        """Log in (or check the stored or given session) and find the folder."""
        try:
            self._folder(Deadline(self._settings.login_deadline_seconds))
        except StorageError:
            raise
        except Exception as exc:
            raise to_storage_error(exc) from None

    def store(
        self, source: Path, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        """Store the file ``source``; the file's date (``extras.mtime``, else the upload's
        time) goes into its fingerprint, which MEGA's apps show."""
        return self._store(
            lambda client, deadline: send_file(client, source, size, self._limits, deadline),
            lambda: True,  # the file is read again from its start
            filename,
            size,
            extras,
        )

    def store_stream(
        self, body: BodyStream, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
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
                body.rewind,
                filename,
                size,
                extras,
            )
        except SourceFailed as failed:
            # The API layer logs why (the client left, the file was another size).
            logger.debug("upload of %d bytes abandoned: its body stopped arriving", size)
            raise failed.error from None

    def _store(
        self,
        send: Callable[[MegaClient, Deadline], SentFile],
        rewind: Callable[[], bool],
        filename: str,
        size: int,
        extras: StoreExtras,
    ) -> StoredFile:
        # One deadline for the whole upload: log-in and folder look-up, the data, u/p/l.
        deadline = Deadline(self._limits.deadline_s)
        try:
            client = self._ready_client(deadline=deadline)
            folder = self._folder(deadline)
            sent = send(client, deadline)
        except (StorageError, SourceFailed):
            raise
        except Exception as exc:
            raise failed(exc, f"upload of {size} bytes") from None

        def make(fields: Mapping[str, str]) -> StoredFile:
            try:
                return self._make_file(
                    client, folder, sent, (send, rewind), filename, fields, extras.mtime, deadline
                )
            except (StorageError, SourceFailed):
                raise
            except Exception as exc:
                raise failed(exc, f"upload of {size} bytes") from None

        # MEGA holds every byte now, but no file exists until 'p': a commit that finds the
        # same bytes stored already (or refuses them) makes none, and MEGA drops the upload.
        return make({}) if extras.commit is None else extras.commit(make)

    def _make_file(
        self,
        client: MegaClient,
        folder: str,
        sent: SentFile,
        again: tuple[Callable[[MegaClient, Deadline], SentFile], Callable[[], bool]],
        filename: str,
        fields: Mapping[str, str],
        mtime: int | None,
        deadline: Deadline,
    ) -> StoredFile:
        """The node for ``sent``, with its record ``fields``, published; ``again`` sends the
        data once more (and rewinds its source) when MEGA lost it."""
        try:
            node = put_file_node(
                client, folder, sent, filename, deadline, mtime=mtime, record=fields
            )
        except MegaApiError as exc:
            if exc.code != ENOENT:
                raise
            # "putnodes returned -9, file-storage server unavailable": the SDK uploads
            # the whole file again (Transfer::failed in src/transfer.cpp); the token
            # went with the server. The folder is looked at again on the way.
            logger.warning("MEGA lost the upload before its node was made; sending it again")
            send, rewind = again
            if not rewind():
                raise StreamCannotRestart(exc) from None
            folder = self._folder(deadline, stale=folder)
            sent = send(client, deadline)
            node = put_file_node(
                client, folder, sent, filename, deadline, mtime=mtime, record=fields
            )
        if node.parent is not None and node.parent != folder:
            node = self._move_home(client, node, folder, deadline)
        link = export_link(client, node.handle, sent.node_key, deadline)
        return StoredFile(handle=node.handle, link=link, key=a32_to_base64(sent.node_key))

    def _move_home(
        self, client: MegaClient, node: PlacedNode, folder: str, deadline: Deadline
    ) -> PlacedNode:
        """The node landed outside ``folder``: MEGA puts a 'p' into a removed folder into
        the rubbish bin instead (``CommandPutNodes::procresult`` in the SDK), where its link
        dies with the next emptying. Find or make the folder again and move the file in."""
        logger.warning(
            "MEGA folder %r was removed; the upload went to the rubbish bin. Making the "
            "folder again and moving the file into it",
            self._settings.folder,
        )
        home = self._folder(deadline, stale=folder)
        client.api({"a": "m", "n": node.handle, "t": home, "i": client.session_tag}, deadline)
        return PlacedNode(node.handle, home)

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
            client = self._ready_client()
            client.api({"a": "d", "n": handle, "i": client.session_tag})
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
        """The destination folder's node id: the one found last, unless that is ``stale``
        (MEGA no longer has it there) or was found longer than ``folder_check_s`` ago; then
        it is looked up again from the root, and made again if it is gone (removed, or
        moved to the rubbish bin)."""

        def fresh(folder: str | None) -> bool:
            age = time.monotonic() - self._folder_checked
            return folder is not None and folder != stale and age < self._folder_check_s

        if fresh(self._folder_id):
            assert self._folder_id is not None
            return self._folder_id
        client = self._ready_client()
        with self._folder_lock:
            if fresh(self._folder_id):  # another thread looked meanwhile
                assert self._folder_id is not None
                return self._folder_id
            found = ensure_folder(
                client,
                self._settings.folder,
                self._session_store.folder_locked,
                FOLDER_LOCK_TIMEOUT_S,
                deadline,
            )
            if self._folder_id is not None and found != self._folder_id:
                logger.warning(
                    "MEGA folder %r is no longer where it was (removed, or moved to the "
                    "rubbish bin); uploads go to the one now at that path",
                    self._settings.folder,
                )
            self._folder_id = found
            self._folder_checked = time.monotonic()
            return found
