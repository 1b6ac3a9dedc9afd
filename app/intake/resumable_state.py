"""Where open resumable (tus) uploads are remembered, and the lock each one is held under.

Two stores with one interface. ``RedisUploadStates`` (with ``REDIS_URL``): any worker of
any instance can take the next piece of any upload, and an instance that restarts goes
on where it stopped. ``FileUploadStates`` (without it): one small file per upload, shared
by the workers and restarts of one machine. Each record is a few hundred bytes; nothing
of a file's content is ever stored here.

One piece at a time per upload: a second request for an upload being written to is
refused at once (``UploadBusy``) rather than queued. The lock dies with its holder: in
Redis it is held for ``LOCK_HOLD_S`` and renewed while the holder lives, and a file lock
(``flock``) is released by the kernel when its process ends, even on ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import redis

from app.intake.errors import HoldLost, NoSuchUpload, UploadBusy, UploadStateUnavailable
from app.shared_state import (
    KEY_PREFIX,
    RedisState,
    SealedBlobs,
    SharedState,
    SharedStateUnavailable,
)

# A holder that died frees its upload after at most this long; a live one renews it.
LOCK_HOLD_S = 30.0
# A request that finds its upload held waits this long before it is refused: a client
# that saw its connection drop sends the next request while the service is still
# winding the dropped one down (storing what arrived), which takes moments.
BUSY_WAIT_S = 3.0
_POLL_S = 0.05
RENEW_EVERY_S = LOCK_HOLD_S / 3
# Records outlive their expiry a little, so that the sweep can still undo what an expired
# upload left (its growing file on local disk, its quota reservation).
KEEP_AFTER_EXPIRY_S = 3600
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{22}")


class Hold(Protocol):
    """One upload, held by this request until ``release``."""

    def check(self) -> None:
        """Raise ``HoldLost`` when the hold was lost (to another request): write nothing."""

    def release(self) -> None: ...


class UploadStates(Protocol):
    """The records of open uploads, by id."""

    def prepare(self) -> None:
        """Make what the store needs locally (at start-up)."""

    def load(self, upload_id: str) -> bytes | None: ...

    def save(self, upload_id: str, record: bytes, expires_at: float) -> None:
        """Store ``record``; ``expires_at`` (Unix time) is when the sweep should end it."""

    def remove(self, upload_id: str) -> None: ...

    def due(self, now: float, most: int) -> list[str]:
        """Ids of uploads whose ``expires_at`` has passed (at most ``most``)."""
        ...

    def hold(self, upload_id: str, wait_s: float = 0.0) -> Hold:
        """Hold the upload, or raise ``UploadBusy`` when another request still holds it
        after ``wait_s``."""
        ...


def new_upload_id() -> str:
    """A random 128-bit id: the upload's URL is a capability next to the credential."""
    return secrets.token_urlsafe(16)


def known_id(upload_id: str) -> bool:
    return bool(UPLOAD_ID.fullmatch(upload_id))


# -- Redis -------------------------------------------------------------------------------


class RedisUploadStates:
    """Records in Redis (sealed when a secret is given), an expiry index, Redis locks."""

    def __init__(self, state: RedisState, sealed: SealedBlobs | None = None) -> None:
        self._state = state
        # Records through the store's own get/put/delete: sealed ones named by their id
        # (the sealed blobs keep their own keys), plain ones under "tus:".
        self._records: SealedBlobs | RedisState = sealed if sealed is not None else state
        self._prefix = "" if sealed is not None else "tus:"
        self._index = KEY_PREFIX + "tus:expiry"

    def prepare(self) -> None:
        """Nothing local."""

    def _run(self, operation: Any) -> Any:
        """``operation``, a Redis command, run as the shared state runs them."""
        with _reachable():
            return self._state.run(operation)

    def load(self, upload_id: str) -> bytes | None:
        with _reachable():
            return self._records.get(self._prefix + upload_id)

    def save(self, upload_id: str, record: bytes, expires_at: float) -> None:
        ttl = max(1, math.ceil(expires_at - time.time() + KEEP_AFTER_EXPIRY_S))
        with _reachable():
            self._records.put(self._prefix + upload_id, record, ttl)
        self._run(lambda: self._state.client.zadd(self._index, {upload_id: expires_at}))

    def remove(self, upload_id: str) -> None:
        with _reachable():
            self._records.delete(self._prefix + upload_id)
        self._run(lambda: self._state.client.zrem(self._index, upload_id))

    def due(self, now: float, most: int) -> list[str]:
        found = self._run(
            lambda: self._state.client.zrangebyscore(self._index, "-inf", now, start=0, num=most)
        )
        return [item.decode() if isinstance(item, bytes) else str(item) for item in found]

    def hold(self, upload_id: str, wait_s: float = 0.0) -> Hold:
        # Not thread-local: the hold is taken, renewed and released by different threads.
        lock = self._state.client.lock(
            KEY_PREFIX + "lock:tus:" + upload_id,
            timeout=LOCK_HOLD_S,
            sleep=_POLL_S,
            thread_local=False,
        )
        taken = self._run(lambda: lock.acquire(blocking=wait_s > 0, blocking_timeout=wait_s))
        if not taken:
            raise UploadBusy()
        return _RedisHold(self._state, lock)


class _RedisHold:
    """A Redis lock renewed every ``RENEW_EVERY_S`` by a small thread while it is held."""

    def __init__(self, state: RedisState, lock: Any) -> None:
        self._state = state
        self._lock = lock
        self._stop = threading.Event()
        self._lost = False
        self._renewer = threading.Thread(target=self._renew, name="tus-hold", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            try:
                # Not through ``RedisState.run``: a lock that was taken is no sign of Redis
                # being down.
                self._lock.reacquire()
            except redis.exceptions.RedisError:
                # Expired (Redis away longer than the hold) or taken: stop writing.
                self._lost = True
                return

    def check(self) -> None:
        if self._lost:
            raise HoldLost()

    def release(self) -> None:
        self._stop.set()
        self._renewer.join(timeout=RENEW_EVERY_S)
        with contextlib.suppress(redis.exceptions.RedisError):
            self._lock.release()  # gone already when it expired


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Shared state out of reach, as the uploads' own error."""
    try:
        yield
    except SharedStateUnavailable:
        raise UploadStateUnavailable() from None


# -- files -------------------------------------------------------------------------------


class FileUploadStates:
    """One ``<id>.json`` per upload (its mtime is the expiry) and one ``<id>.lock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not known_id(upload_id):
            raise NoSuchUpload()
        return self.directory / f"{upload_id}{suffix}"

    def load(self, upload_id: str) -> bytes | None:
        try:
            return self._path(upload_id, ".json").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def save(self, upload_id: str, record: bytes, expires_at: float) -> None:
        self.prepare()
        target = self._path(upload_id, ".json")
        fresh = self.directory / f".{upload_id}.{secrets.token_hex(4)}"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        # The expiry as the mtime: the sweep needs no read of each record. Set before the
        # rename, so no record is ever seen with "now" as its expiry.
        os.utime(fresh, (expires_at, expires_at))
        os.replace(fresh, target)

    def remove(self, upload_id: str) -> None:
        for suffix in (".json", ".lock"):
            self._path(upload_id, suffix).unlink(missing_ok=True)

    def due(self, now: float, most: int) -> list[str]:
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                upload_id = entry.name.removesuffix(".json")
                if entry.name.endswith(".json") and known_id(upload_id):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime <= now:
                            found.append(upload_id)
                if len(found) >= most:
                    break
        return found

    def hold(self, upload_id: str, wait_s: float = 0.0) -> Hold:
        if not self._path(upload_id, ".json").exists():
            raise NoSuchUpload()  # no lock file for ids nobody made
        fd = os.open(self._path(upload_id, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return _FileHold(fd)
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise UploadBusy() from None
            time.sleep(_POLL_S)


class _FileHold:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def check(self) -> None:
        """A flock is never taken away from a live holder."""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def build_upload_states(shared: SharedState, directory: Path, secret: bytes | None) -> UploadStates:
    """Redis when the shared state is Redis (records sealed with ``secret`` when given),
    else small files in ``directory``."""
    if isinstance(shared, RedisState):
        sealed = SealedBlobs(shared, secret, "tus-upload", "uploads") if secret else None
        return RedisUploadStates(shared, sealed)
    return FileUploadStates(directory)
