"""The last good TOKENS_FILE, shared by the processes of one gunicorn instance.

Each process keeps the last good file it read in memory, so a mistake in the file never
takes the tokens away from a running process. A worker that gunicorn starts while the
file is bad (after SIGHUP, or in place of one that died) has read nothing yet: it takes
the last good text from here instead of stopping, and with it the service.

The text lives in an anonymous temporary file that the gunicorn master opens before any
worker starts: every worker inherits it, none can lose it (it has no name, so nothing
cleans it up under them), and it is gone when the last of them exits. Every process that
accepts a version of the file writes it here, so a worker started later gets the newest
version any of them accepted, and a token revoked by an edit stays revoked even when the
next edit is a mistake.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from typing import IO


class LastGoodTokens:
    """The text of the newest tokens file any process of this instance accepted."""

    def __init__(self, text: str) -> None:
        # Open for as long as the process lives: it is the point of this object.
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="paimon-tokens-")  # noqa: SIM115
        self.remember(text)

    def remember(self, text: str) -> None:
        """Keep ``text``, a tokens file that was just read and accepted."""
        data = text.encode("utf-8", "surrogateescape")
        fd = self._file.fileno()
        # Record locks (lockf) belong to a process, so they exclude the other workers even
        # though they all share this one open file; a killed holder releases its lock.
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def recall(self) -> str:
        """The text last kept, by this process or any other of the instance."""
        fd = self._file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_SH)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return data.decode("utf-8", "surrogateescape")
