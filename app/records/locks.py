"""Locks shared by every process that works on the same records.

With ``REDIS_URL``: Redis locks, shared by every worker and instance (held at most
``hold_s``, renewed by long holders), and lock files while Redis is out of reach. Without
it: lock files (``flock``) in the storage's lock directory, shared by the worker processes
of one machine and by a ``python server.py sweep`` beside them; the kernel releases them
when a holder dies. No lock waits without a limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from redis.exceptions import LockError

from app.filelock import exclusive
from app.shared_state import LockTimeout, RedisState, SharedState, SharedStateUnavailable

log = logging.getLogger(__name__)


class Held:
    """A lock being held; ``renew`` gives a Redis lock its full time again."""

    def __init__(self, renew: Callable[[], object] | None = None) -> None:
        self._renew = renew

    def renew(self) -> None:
        """Keep holding: a long holder calls this between steps (a no-op for lock files)."""
        if self._renew is None:
            return
        with contextlib.suppress(LockError, SharedStateUnavailable):
            self._renew()


class Locks:
    """Named locks for one records namespace."""

    def __init__(self, shared: SharedState, directory: Path, namespace: str) -> None:
        self._redis = shared if isinstance(shared, RedisState) else None
        self._directory = directory
        self._namespace = namespace

    @contextlib.contextmanager
    def hold(self, name: str, wait_s: float, hold_s: float) -> Iterator[Held]:
        """Hold ``name``, waiting at most ``wait_s``; ``LockTimeout`` when it stays taken."""
        with self._held(name, wait_s, hold_s) as held:
            if held is None:
                raise LockTimeout(name)
            yield held

    @contextlib.contextmanager
    def attempt(self, name: str, hold_s: float) -> Iterator[Held | None]:
        """Hold ``name`` if it is free now; None when someone else holds it."""
        with self._held(name, 0, hold_s) as held:
            yield held

    @contextlib.contextmanager
    def _held(self, name: str, wait_s: float, hold_s: float) -> Iterator[Held | None]:
        if self._redis is not None:
            state = self._redis
            lock = state.client.lock(
                f"{self._namespace}:{name}", timeout=hold_s, blocking_timeout=wait_s
            )
            try:
                acquired = state.run(lock.acquire)
            except SharedStateUnavailable:
                # The shared state has said once that Redis is away; no line per lock.
                log.debug("records lock %r taken on this machine only", name)
            else:
                if not acquired:
                    yield None
                    return
                try:
                    yield Held(lambda: state.run(lock.reacquire))
                finally:
                    # Expired meanwhile, or Redis gone: nothing to release.
                    with contextlib.suppress(LockError, SharedStateUnavailable):
                        state.run(lock.release)
                return
        taken = contextlib.ExitStack()
        try:
            taken.enter_context(exclusive(self._lock_file(name), wait_s, _timeout))
        except LockTimeout:
            yield None
            return
        with taken:
            yield Held()

    def _lock_file(self, name: str) -> Path:
        """A lock file per name (``sweep``), or for names of many things (``file:<id>``),
        one of a fixed set per kind: the directory never grows, and two things that share
        a file only wait for each other."""
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # made on first use
        kind, separator, thing = name.partition(":")
        if not separator:
            return self._directory / f"{kind}.lock"
        bucket = hashlib.sha256(f"{self._namespace}:{thing}".encode()).hexdigest()[:2]
        return self._directory / f"{kind}-{bucket}.lock"


def _timeout() -> LockTimeout:
    return LockTimeout("records")
