"""Where the MEGA session lives between log-ins, and the lock around a log-in.

``SessionStore`` is the interface: load, save, clear, and a bounded lock that lets one
process log in at a time. ``FileSessionStore`` is the one for a single machine;
``SharedSessionStore`` keeps the session and the lock in the shared store (Redis), for
several machines, and falls back to the file while Redis is out of reach.

A session made elsewhere (``python server.py mega-session``) travels as one line,
``encode_session``/``decode_session``; the service takes it from ``MEGA_SESSION``.

MEGA blocks accounts that log in too often and a log-in is slow, so one session is
shared by every thread, every worker process and every restart: it lives in a JSON
file (sid, master key, user handle) readable only by its owner, keyed to the account
so that a changed email or API URL never reuses it. A lock file next to it
(``fcntl.flock``) lets only one process log in at a time; whoever takes the lock reads
the file again first, since another process may have logged in meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.config import SESSION_PREFIX
from app.filelock import exclusive
from app.shared_state import LockTimeout, SealedBlobs, SharedState, SharedStateUnavailable

from .errors import FolderLockTimeout, LoginLockTimeout

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class CachedSession:
    sid: str
    master_key: list[int]
    user_handle: str | None

    def __repr__(self) -> str:  # never print the secrets
        return f"CachedSession(user_handle={self.user_handle!r})"


def _parse(data: Any) -> CachedSession | None:
    """A session from its JSON form, or None when any part is missing or malformed."""
    if not isinstance(data, dict):
        return None
    sid, key, user = data.get("sid"), data.get("master_key"), data.get("user")
    if not isinstance(sid, str) or not sid:
        return None
    if not (isinstance(key, list) and len(key) == 4):
        return None
    if not all(
        isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 0xFFFFFFFF for k in key
    ):
        return None
    return CachedSession(sid, list(key), user if isinstance(user, str) else None)


def encode_session(session: CachedSession, account: str) -> str:
    """The one line ``MEGA_SESSION`` takes. It is a credential: whoever has it can use the
    account (its files and its keys) until the session is ended."""
    body = json.dumps(
        {
            "account": account,
            "sid": session.sid,
            "master_key": session.master_key,
            "user": session.user_handle,
        },
        separators=(",", ":"),
    )
    return SESSION_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_session(text: str, account: str) -> CachedSession | None:
    """The session in a ``MEGA_SESSION`` value, or None when it is damaged or was made for
    another account or API URL."""
    text = text.strip()
    if not text.startswith(SESSION_PREFIX):
        return None
    encoded = text[len(SESSION_PREFIX) :]
    try:
        data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(data, dict) or data.get("account") != account:
        return None
    return _parse(data)


class SessionStore(Protocol):
    """Where the session is kept between log-ins, shared by threads and processes."""

    def load(self) -> CachedSession | None:
        """The stored session of this account, or None."""
        ...

    def save(self, session: CachedSession) -> None:
        """Keep ``session`` for the other threads, processes and restarts."""
        ...

    def clear(self, sid: str) -> None:
        """Forget the stored session if it is still ``sid`` (MEGA rejected it)."""
        ...

    def locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the log-in lock; ``LoginLockTimeout`` after ``timeout_s``."""
        ...

    def folder_locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the lock around creating the destination folder, shared as widely as the
        session; ``FolderLockTimeout`` after ``timeout_s``."""
        ...


def account_key(email: str, api_url: str) -> str:
    """Identifies the account a cache belongs to, without storing the email in clear."""
    return hashlib.sha256(f"{email.strip().lower()}\n{api_url.rstrip('/')}".encode()).hexdigest()


class FileSessionStore:
    """Reads and writes one session file; all methods are safe to call from many threads
    as long as writes happen under :meth:`locked`."""

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.folder_lock_path = path.with_name(path.name + ".folder.lock")
        self.account = account

    def load(self) -> CachedSession | None:
        """The cached session of this account, or None (missing, other account, damaged)."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("MEGA session cache unreadable (%s); logging in", type(exc).__name__)
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            logger.warning("MEGA session cache damaged; logging in")
            return None
        if data.get("version") != FORMAT_VERSION or data.get("account") != self.account:
            return None
        return _parse(data)

    def save(self, session: CachedSession) -> None:
        """Write atomically (temp file + rename), created with mode 0600 from the start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = _session_json(session, self.account)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def clear(self, sid: str) -> None:
        cached = self.load()
        if cached is not None and cached.sid == sid:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the cross-process log-in lock; LoginLockTimeout after ``timeout_s``."""
        return exclusive(self.lock_path, timeout_s, LoginLockTimeout)

    def folder_locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        return exclusive(self.folder_lock_path, timeout_s, FolderLockTimeout)


def _session_json(session: CachedSession, account: str) -> bytes:
    return json.dumps(
        {
            "version": FORMAT_VERSION,
            "account": account,
            "sid": session.sid,
            "master_key": session.master_key,
            "user": session.user_handle,
            "saved_at": int(time.time()),
        }
    ).encode()


# The name of the session and of the log-in lock among the shared store's sealed blobs.
SHARED_NAME = "login"


class SharedSessionStore:
    """The session sealed in the shared store (Redis), and the log-in lock there too, so
    that every worker and instance logs in once and shares one session.

    The sealing key comes from the MEGA password through scrypt (see ``SealedBlobs``),
    and Redis never sees the password: whoever reads Redis cannot decrypt the session
    without it, though they can try guesses at it, slowly (a strong password is the
    protection). The entry's name comes from the account alone (``account_key``), so a
    changed password finds an entry that does not open, treats it as no session, logs in
    and replaces it. The session file is kept as well, as this machine's copy: while Redis is out of
    reach the store reads and writes only the file and takes the file's lock, so the
    service goes on with a log-in of its own if it needs one. A session found only in the
    file (Redis emptied or replaced) is handed to Redis for the others.
    """

    def __init__(
        self,
        blobs: SealedBlobs,
        local: FileSessionStore,
        forget_legacy: Callable[[], None] | None = None,
    ) -> None:
        self._blobs = blobs
        self._local = local
        self._unreachable_logged = False
        self._forget_legacy = forget_legacy

    def _put(self, session: CachedSession) -> None:
        self._blobs.put(SHARED_NAME, _session_json(session, self._local.account))
        if self._forget_legacy is not None:
            forget, self._forget_legacy = self._forget_legacy, None
            forget()

    def _unreachable(self, error: SharedStateUnavailable) -> None:
        # One line per outage: the shared store already logs its own, this one says what
        # it means for MEGA.
        if not self._unreachable_logged:
            self._unreachable_logged = True
            logger.error(
                "MEGA session: shared state unreachable (%s); using this machine's session "
                "file and log-in lock until it is back",
                error,
            )

    def _shared(self) -> CachedSession | None:
        raw = self._blobs.get(SHARED_NAME)
        self._unreachable_logged = False
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("account") != self._local.account:
            return None
        return _parse(data)

    def load(self) -> CachedSession | None:
        try:
            shared = self._shared()
        except SharedStateUnavailable as error:
            self._unreachable(error)
            return self._local.load()
        if shared is not None:
            return shared
        local = self._local.load()
        if local is not None:
            with contextlib.suppress(SharedStateUnavailable):
                self._put(local)
        return local

    def save(self, session: CachedSession) -> None:
        try:
            self._put(session)
        except SharedStateUnavailable as error:
            self._unreachable(error)
        self._local.save(session)

    def clear(self, sid: str) -> None:
        try:
            shared = self._shared()
            if shared is not None and shared.sid == sid:
                self._blobs.delete(SHARED_NAME)
        except SharedStateUnavailable as error:
            self._unreachable(error)
        self._local.clear(sid)

    def locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """The shared log-in lock, held at most ``timeout_s`` (a log-in's longest time);
        the file's lock instead when Redis cannot be reached. Never waits unbounded."""
        return self._shared_lock(SHARED_NAME, timeout_s, LoginLockTimeout, self._local.locked)

    def folder_locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        return self._shared_lock("folder", timeout_s, FolderLockTimeout, self._local.folder_locked)

    @contextlib.contextmanager
    def _shared_lock(
        self,
        name: str,
        timeout_s: float,
        on_timeout: Callable[[], Exception],
        local: Callable[[float], contextlib.AbstractContextManager[None]],
    ) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._blobs.lock(name, timeout_s, timeout_s))
            except LockTimeout:
                raise on_timeout() from None
            except SharedStateUnavailable as error:
                self._unreachable(error)
                held.enter_context(local(timeout_s))
            yield


def _legacy_entry(secret: bytes) -> str:
    """The name earlier versions gave the shared session: derived from the password with a
    fast hash, so anyone reading Redis could test guesses quickly. Only ever deleted."""
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"paimon-server shared blob v1",
        info=b"mega-session",
    ).derive(secret)
    return f"blob:mega-session:{hashlib.sha256(b'namespace' + key).hexdigest()[:16]}:login"


def shared_session_store(
    state: SharedState, email: str, password: str, api_url: str, session_file: Path
) -> SessionStore:
    """The session store for these credentials: in the shared store when it is Redis,
    else the session file (a per-process store would share nothing across workers).

    The entry in Redis is named after the account (never after the password) and sealed
    with a key scrypt derives from the email, password and API URL."""
    account = account_key(email, api_url)
    local = FileSessionStore(session_file, account)
    if state.kind == "memory":
        return local
    secret = f"{email.strip().lower()}\n{password}\n{api_url.rstrip('/')}".encode()
    legacy = _legacy_entry(secret)
    return SharedSessionStore(
        SealedBlobs(state, secret, "mega-session", account[:32]),
        local,
        # Once the new entry is written, the old one would only be an offline target.
        forget_legacy=lambda: state.delete(legacy),
    )


class MemorySessionStore:
    """A session store for one process that shares nothing (the mega-session command)."""

    def __init__(self) -> None:
        self._session: CachedSession | None = None
        self._lock = threading.Lock()
        self._folder_lock = threading.Lock()

    def load(self) -> CachedSession | None:
        return self._session

    def save(self, session: CachedSession) -> None:
        self._session = session

    def clear(self, sid: str) -> None:
        if self._session is not None and self._session.sid == sid:
            self._session = None

    @contextlib.contextmanager
    def locked(self, timeout_s: float) -> Iterator[None]:
        if not self._lock.acquire(timeout=timeout_s):
            raise LoginLockTimeout()
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def folder_locked(self, timeout_s: float) -> Iterator[None]:
        if not self._folder_lock.acquire(timeout=timeout_s):
            raise FolderLockTimeout()
        try:
            yield
        finally:
            self._folder_lock.release()
