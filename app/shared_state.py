"""State that every worker and instance must agree on: counters, small blobs, locks.

Two stores with one interface. ``MemoryState`` keeps everything in the process: the
embedded default, right for one worker, and per worker otherwise. ``RedisState`` keeps it
in Redis (``REDIS_URL``), shared by any number of workers and instances.

When Redis stops answering, ``RedisState`` raises ``SharedStateUnavailable`` at once
instead of waiting on every call: after a failure it logs one line, and only tries again
every ``RETRY_SECONDS``; the first success logs one line more. Callers decide what to do
without it (rate limits fall back to per-process counting, tickets are refused).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, NamedTuple, TypeVar

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from limits.errors import StorageError as LimitsStorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

KEY_PREFIX = "paimon:"
RETRY_SECONDS = 2.0
# Short enough that a request never waits long on a Redis that went away, long enough
# for a Redis across a data-centre network.
CONNECT_TIMEOUT_SECONDS = 1.0
COMMAND_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")
C = TypeVar("C")


class Reserved(NamedTuple):
    """What ``reserve`` did: whether it added, the counter after it, and the seconds until
    the counter is forgotten."""

    granted: bool
    used: int
    resets_in: float


class SharedStateUnavailable(Exception):
    """The shared store (Redis) cannot be reached right now."""


class LockTimeout(Exception):
    """A shared lock was not acquired within the wait the caller allowed."""


class SharedState:
    """The interface; see ``MemoryState`` and ``RedisState``."""

    kind = "memory"
    limits_storage: Storage

    def run(self, operation: Callable[[], T]) -> T:
        """Run a call against the store, raising SharedStateUnavailable if it is out of reach."""
        return operation()

    def incr(self, key: str, ttl_seconds: int, amount: int = 1) -> int:
        """Add ``amount`` to ``key`` (created at 0, forgotten ``ttl_seconds`` after that);
        the new value."""
        raise NotImplementedError

    def reserve(self, key: str, amount: int, limit: int, ttl_seconds: int) -> Reserved:
        """Add ``amount`` to the counter ``key`` only if it stays within ``limit``, in one
        atomic step (a refusal adds nothing); the counter is forgotten ``ttl_seconds``
        after it was made."""
        raise NotImplementedError

    def release(self, key: str, amount: int) -> None:
        """Take ``amount`` back from the counter ``key``; nothing once it was forgotten
        (a reservation from a window that has ended gives nothing to the next one)."""
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def lock(
        self, name: str, hold_seconds: float, wait_seconds: float
    ) -> contextlib.AbstractContextManager[None]:
        """A lock held at most ``hold_seconds`` (in Redis; in process memory it is held until
        the block ends); LockTimeout after waiting ``wait_seconds``."""
        raise NotImplementedError

    def problem(self) -> str | None:
        """None when the store works, else a sentence for /ready."""
        return None

    def close(self) -> None:
        """Release connections."""


class MemoryState(SharedState):
    """Everything in this process: shared by its requests, not by other workers."""

    def __init__(self) -> None:
        self.limits_storage = MemoryStorage()
        self._values: dict[str, tuple[bytes | int, float | None]] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _live(self, key: str) -> bytes | int | None:
        value, expires = self._values.get(key, (None, None))
        if expires is not None and expires <= time.monotonic():
            self._values.pop(key, None)
            return None
        return value

    def incr(self, key: str, ttl_seconds: int, amount: int = 1) -> int:
        with self._guard:
            current = self._live(key)
            value = (current if isinstance(current, int) else 0) + amount
            expires = self._values.get(key, (0, time.monotonic() + ttl_seconds))[1]
            self._values[key] = (value, expires)
            return value

    def reserve(self, key: str, amount: int, limit: int, ttl_seconds: int) -> Reserved:
        with self._guard:
            current = self._live(key)
            used = current if isinstance(current, int) else 0
            expires = self._values[key][1] if current is not None else None
            if expires is None:
                expires = time.monotonic() + ttl_seconds
            resets_in = max(0.0, expires - time.monotonic())
            if used + amount > limit:
                return Reserved(False, used, resets_in)
            self._values[key] = (used + amount, expires)
            return Reserved(True, used + amount, resets_in)

    def release(self, key: str, amount: int) -> None:
        with self._guard:
            current = self._live(key)
            if isinstance(current, int):
                self._values[key] = (current - amount, self._values[key][1])

    def get(self, key: str) -> bytes | None:
        with self._guard:
            value = self._live(key)
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        expires = None if ttl_seconds is None else time.monotonic() + ttl_seconds
        with self._guard:
            self._values[key] = (value, expires)

    def delete(self, key: str) -> None:
        with self._guard:
            self._values.pop(key, None)

    @contextlib.contextmanager
    def lock(self, name: str, hold_seconds: float, wait_seconds: float) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=wait_seconds):
            raise LockTimeout(name)
        try:
            yield
        finally:
            lock.release()


_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if used + amount > limit then
    return {0, used, redis.call('PTTL', KEYS[1])}
end
used = redis.call('INCRBY', KEYS[1], amount)
if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {1, used, redis.call('PTTL', KEYS[1])}
"""
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('DECRBY', KEYS[1], ARGV[1])
end
return 0
"""


class RedisState(SharedState):
    """Everything in Redis, under keys starting with ``paimon:``."""

    kind = "redis"

    def __init__(self, url: str) -> None:
        # No retries inside the client: a call either answers within the timeouts or
        # fails, and this class decides when to try Redis again.
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        self.limits_storage = RedisStorage(
            url,
            connection_pool=self.client.connection_pool,
            key_prefix=KEY_PREFIX + "limits",
            wrap_exceptions=True,
        )
        # One round trip, atomic across every instance: check and add happen together.
        self._reserve = self.client.register_script(_RESERVE)
        self._release = self.client.register_script(_RELEASE)
        self._guard = threading.Lock()
        self._down_since: float | None = None
        self._last_attempt = 0.0
        self._last_error = ""

    def run(self, operation: Callable[[], T]) -> T:
        with self._guard:
            if (
                self._down_since is not None
                and time.monotonic() - self._last_attempt < RETRY_SECONDS
            ):
                raise SharedStateUnavailable(self._last_error)
            self._last_attempt = time.monotonic()
        try:
            result = operation()
        except (redis.RedisError, LimitsStorageError, OSError) as error:
            self._mark_down(error)
            raise SharedStateUnavailable(self._last_error) from None
        if self._down_since is not None:
            with self._guard:
                if self._down_since is not None:
                    log.warning(
                        "shared state: Redis reachable again after %.0f s; limits and "
                        "tickets are shared again",
                        time.monotonic() - self._down_since,
                    )
                    self._down_since = None
        return result

    def _mark_down(self, error: BaseException) -> None:
        cause = error.__cause__ if isinstance(error, LimitsStorageError) else error
        # The class and the first line only: redis-py's messages carry host and port,
        # never the password, but a URL could; keep it short either way.
        first_line = (str(cause).splitlines() or [""])[0]
        self._last_error = f"{type(cause).__name__}: {first_line[:160]}"
        with self._guard:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            log.error(
                "shared state: Redis unreachable (%s); uploads go on with limits counted "
                "per process and tickets refused until it is back",
                self._last_error,
            )

    def incr(self, key: str, ttl_seconds: int, amount: int = 1) -> int:
        def operation() -> int:
            # SET NX EX then INCRBY in one MULTI: the expiry is set once, when the key is
            # made (EXPIRE NX would need Redis 7; Render's older Key Values run Redis 6).
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(KEY_PREFIX + key, 0, ex=ttl_seconds, nx=True)
                pipe.incrby(KEY_PREFIX + key, amount)
                return int(pipe.execute()[1])

        return self.run(operation)

    def reserve(self, key: str, amount: int, limit: int, ttl_seconds: int) -> Reserved:
        granted, used, left_ms = self.run(
            lambda: self._reserve(keys=[KEY_PREFIX + key], args=[amount, limit, ttl_seconds])
        )
        return Reserved(bool(granted), int(used), max(0, int(left_ms)) / 1000)

    def release(self, key: str, amount: int) -> None:
        self.run(lambda: self._release(keys=[KEY_PREFIX + key], args=[amount]))

    def get(self, key: str) -> bytes | None:
        return self.run(lambda: self.client.get(KEY_PREFIX + key))  # type: ignore[return-value]

    def put(self, key: str, value: bytes, ttl_seconds: int | None = None) -> None:
        self.run(lambda: self.client.set(KEY_PREFIX + key, value, ex=ttl_seconds))

    def delete(self, key: str) -> None:
        self.run(lambda: self.client.delete(KEY_PREFIX + key))

    @contextlib.contextmanager
    def lock(self, name: str, hold_seconds: float, wait_seconds: float) -> Iterator[None]:
        lock = self.client.lock(
            KEY_PREFIX + "lock:" + name, timeout=hold_seconds, blocking_timeout=wait_seconds
        )
        if not self.run(lock.acquire):
            raise LockTimeout(name)
        try:
            yield
        finally:
            # Expired meanwhile (held past hold_seconds) or Redis gone: nothing to release.
            with contextlib.suppress(redis.exceptions.LockError, SharedStateUnavailable):
                self.run(lock.release)

    def problem(self) -> str | None:
        try:
            self.run(self.client.ping)
        except SharedStateUnavailable:
            # /ready answers anyone: the cause (with Redis's host and port) goes to the log.
            return (
                "shared state (Redis) unreachable; limits are counted per process "
                "and tickets are refused until it is back"
            )
        return None

    def close(self) -> None:
        self.client.close()


def build_shared_state(redis_url: str | None) -> SharedState:
    """Redis when a URL is configured, else the in-process store."""
    return RedisState(redis_url) if redis_url else MemoryState()


class SharedCounters(Generic[C]):
    """Counters (``limits`` limiters) in the shared store, and the same counters in this
    process for while a configured Redis is out of reach: counting fails open to per-process
    counting, never to an error."""

    def __init__(self, state: SharedState, make: Callable[[Storage], C]) -> None:
        self._state = state
        self._shared = make(state.limits_storage)
        self._local = make(MemoryStorage()) if state.kind != "memory" else self._shared

    def count(self, operation: Callable[[C], T]) -> T:
        """``operation`` on the shared counters, or on this process's while Redis is away."""
        try:
            return self._state.run(lambda: operation(self._shared))
        except SharedStateUnavailable:
            return operation(self._local)


# The sealing key's cost: scrypt at these parameters takes tens of milliseconds and 16 MiB
# once per process (the key is cached), so that whoever can read Redis (a dump, another
# service on the same instance) tests password guesses thousands of times slower than
# with a plain hash.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024


@functools.lru_cache(maxsize=8)
def sealing_key(secret: bytes, purpose: str, namespace: str) -> bytes:
    """The AES key for one secret: scrypt over ``secret``, salted with a fixed label, the
    purpose and the (non-secret) namespace, so a guess tested against one account's entry
    says nothing about another's. Cached: derived once per process, not per request."""
    salt = f"paimon-server sealed blob v2\n{purpose}\n{namespace}".encode()
    return hashlib.scrypt(
        secret,
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=32,
    )


class SealedBlobs:
    """Small values kept in the shared store encrypted with a key derived from ``secret``
    (e.g. the MEGA password), which Redis never sees.

    What protects a value is the secret alone, through scrypt (:func:`sealing_key`):
    whoever can read Redis cannot decrypt it without the secret, but can still try
    guesses at it offline, slowly, so the secret must be a strong password. Key names
    carry only ``namespace``, which must be derived from nothing secret (e.g. the account),
    so they reveal nothing about the secret; a value sealed with another secret under the
    same name (a changed password) does not open and reads as missing, and the next
    :meth:`put` replaces it. Values are AES-GCM sealed with their key name as associated
    data, so a value copied to another key does not open either.
    """

    def __init__(self, state: SharedState, secret: bytes, purpose: str, namespace: str) -> None:
        self._state = state
        self._purpose = purpose
        self._namespace = namespace
        self._aead = AESGCM(sealing_key(secret, purpose, namespace))

    def _key(self, name: str) -> str:
        return f"blob:{self._purpose}:{self._namespace}:{name}"

    def put(self, name: str, value: bytes, ttl_seconds: int | None = None) -> None:
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, value, self._key(name).encode())
        self._state.put(self._key(name), base64.b64encode(sealed), ttl_seconds)

    def get(self, name: str) -> bytes | None:
        stored = self._state.get(self._key(name))
        if stored is None:
            return None
        try:
            sealed = base64.b64decode(stored)
            return self._aead.decrypt(sealed[:12], sealed[12:], self._key(name).encode())
        except Exception:  # tampered, truncated, or sealed with another secret
            log.warning(
                "shared state: the stored %s %r does not open (another password, or "
                "altered); ignored",
                self._purpose,
                name,
            )
            return None

    def delete(self, name: str) -> None:
        self._state.delete(self._key(name))

    def lock(
        self, name: str, hold_seconds: float, wait_seconds: float
    ) -> contextlib.AbstractContextManager[None]:
        """A lock shared by everyone in the same namespace (whatever their secret)."""
        return self._state.lock(
            f"{self._purpose}:{self._namespace}:{name}", hold_seconds, wait_seconds
        )
