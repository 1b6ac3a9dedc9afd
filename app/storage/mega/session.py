"""The MEGA session cache file and the cross-process log-in lock.

MEGA blocks accounts that log in too often and a log-in is slow, so one session is
shared by every thread, every worker process and every restart: it lives in a JSON
file (sid, master key, user handle) readable only by its owner, keyed to the account
so that a changed email or API URL never reuses it. A lock file next to it
(``fcntl.flock``) lets only one process log in at a time; whoever takes the lock reads
the file again first, since another process may have logged in meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LoginLockTimeout
from .filelock import exclusive

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class CachedSession:
    sid: str
    master_key: list[int]
    user_handle: str | None

    def __repr__(self) -> str:  # never print the secrets
        return f"CachedSession(user_handle={self.user_handle!r})"


def account_key(email: str, api_url: str) -> str:
    """Identifies the account a cache belongs to, without storing the email in clear."""
    return hashlib.sha256(f"{email.strip().lower()}\n{api_url}".encode()).hexdigest()


class SessionStore:
    """Reads and writes one session file; all methods are safe to call from many threads
    as long as writes happen under :meth:`locked`."""

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
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
            if data.get("version") != FORMAT_VERSION or data.get("account") != self.account:
                return None
            sid, key, user = data["sid"], data["master_key"], data.get("user")
            if not isinstance(sid, str) or not sid:
                return None
            if not (isinstance(key, list) and len(key) == 4):
                return None
            if not all(isinstance(k, int) and 0 <= k <= 0xFFFFFFFF for k in key):
                return None
            return CachedSession(sid, list(key), user if isinstance(user, str) else None)
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("MEGA session cache damaged; logging in")
            return None

    def save(self, session: CachedSession) -> None:
        """Write atomically (temp file + rename), created with mode 0600 from the start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "version": FORMAT_VERSION,
                "account": self.account,
                "sid": session.sid,
                "master_key": session.master_key,
                "user": session.user_handle,
                "saved_at": int(time.time()),
            }
        ).encode()
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

    def locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the cross-process log-in lock; LoginLockTimeout after ``timeout_s``."""
        return exclusive(self.lock_path, timeout_s, LoginLockTimeout)
