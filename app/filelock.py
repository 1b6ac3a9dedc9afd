"""An exclusive lock shared by threads and worker processes, bounded in time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.05


@contextlib.contextmanager
def exclusive(path: Path, timeout_s: float, on_timeout: Callable[[], Exception]) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created 0600); raise ``on_timeout()`` after ``timeout_s``.

    Polls with LOCK_NB rather than blocking, so no waiter can hang without bound.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        give_up_at = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= give_up_at:
                raise on_timeout()
            time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
