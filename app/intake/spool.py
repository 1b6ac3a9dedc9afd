"""Request body -> private temporary file: bounded chunks, size cap, sha256, cleanup.

Each temporary file is held under an exclusive ``flock`` for as long as its upload
runs. That lets any process sweep leftovers at start-up: a file it can lock belongs to
no live upload (its owner crashed), while files of other running workers stay locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anyio
from anyio import to_thread

from app.intake.leftovers import remove_if_abandoned
from app.storage.base import Readiness, StartupError, StorageFull, StorageUnavailable

log = logging.getLogger(__name__)

PREFIX = "paimon-upload-"
T = TypeVar("T")
# Below this much free space the spool reports itself not ready: uploads would fail.
MIN_FREE_BYTES = 16 * 1024 * 1024


class SpoolUnusable(StartupError):
    """TEMP_UPLOAD_DIR cannot be used safely."""


class SpoolFile:
    """One upload's private temporary file, written unbuffered from worker threads.

    Unbuffered, so that every byte ``write`` returned for is in the file at once: a
    streamed upload that MEGA asks to restart replays the file from it while it is
    still being written.
    """

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self._file = file
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (blocking: call it in a worker thread)."""
        _disk_errors(self._write_all, memoryview(data))

    def _write_all(self, view: memoryview) -> None:
        while view:
            written = self._file.write(view) or 0
            view = view[written:]
            self.size += written


class Spool:
    """The directory of in-flight uploads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> int:
        """Create the directory (private to this user) and remove crash leftovers."""
        self._make_directory()
        return self.sweep()

    def _make_directory(self) -> None:
        setting = f"TEMP_UPLOAD_DIR {self.directory}"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.lstat()
        except FileExistsError:
            raise SpoolUnusable(f"{setting} is a file, not a directory") from None
        except OSError as error:
            raise SpoolUnusable(f"{setting} cannot be created: {error.strerror}") from None
        # A directory someone else made first (a shared /tmp), or a symlink to one, would
        # let them swap an upload for a link to any file this service can read.
        if stat.S_ISLNK(info.st_mode):
            raise SpoolUnusable(f"{setting} is a symlink; name the real directory")
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise SpoolUnusable(f"{setting} is not a directory of this user")
        if info.st_mode & 0o077:
            self.directory.chmod(0o700)

    def readiness(self) -> Readiness:
        if not self.directory.is_dir() or not os.access(self.directory, os.W_OK | os.X_OK):
            return Readiness(False, "the temporary upload directory is not writable")
        if shutil.disk_usage(self.directory).free < MIN_FREE_BYTES:
            return Readiness(False, "the temporary upload disk is full")
        return Readiness(True)

    def sweep(self) -> int:
        """Delete temporary files that no live upload holds; return how many."""
        removed = sum(remove_if_abandoned(path) for path in self.directory.glob(f"{PREFIX}*"))
        if removed:
            log.info("removed %d leftover temporary upload file(s)", removed)
        return removed

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[SpoolFile]:
        """A new locked temporary file, removed when the block ends, whatever happens.

        Creating and removing run in a worker thread: unlinking a large file can wait on
        the file system's journal, and the event loop must not wait with it.
        """
        fd, name = await to_thread.run_sync(self._create_locked)
        path = Path(name)
        file = os.fdopen(fd, "wb", buffering=0)
        try:
            yield SpoolFile(path, file)
        finally:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(_discard, path, file)

    def _create_locked(self) -> tuple[int, str]:
        while True:
            # mkstemp: O_EXCL and mode 0600, so no other user can read an upload.
            try:
                fd, name = _disk_errors(tempfile.mkstemp, prefix=PREFIX, dir=self.directory)
            except StorageUnavailable:
                # Temp cleaners remove idle directories under /tmp: make it again, once.
                try:
                    self._make_directory()
                except SpoolUnusable as error:
                    log.error("%s", error)
                    raise StorageUnavailable("the server cannot store uploads right now") from None
                fd, name = _disk_errors(tempfile.mkstemp, prefix=PREFIX, dir=self.directory)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                return fd, name
            os.close(fd)  # a sweep removed it between create and lock: take another


def _discard(path: Path, file: BinaryIO) -> None:
    try:
        path.unlink(missing_ok=True)
    finally:
        # Closing also releases the lock, so a later sweep can remove what is left. After
        # a failed write (a full disk) closing retries it and fails again; that second
        # error must not replace the first, and the file's bytes are not wanted anyway.
        with contextlib.suppress(OSError):
            file.close()


def _disk_errors(action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``action``; a full disk is StorageFull (507), other disk failures 503."""
    try:
        return action(*args, **kwargs)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull("the server's temporary storage is full") from error
        log.error("temporary upload storage failed: %s", error.strerror)
        raise StorageUnavailable("the server cannot store uploads right now") from error
