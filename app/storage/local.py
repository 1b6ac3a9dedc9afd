"""Local-disk backend: files under LOCAL_STORAGE_DIR, served back by the download route."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from app.intake.leftovers import remove_if_abandoned
from app.storage.base import (
    NO_EXTRAS,
    BodyStream,
    Capabilities,
    Readiness,
    StartupError,
    StorageFull,
    StorageUnavailable,
    StoredFile,
    StoreExtras,
    UpstreamRejected,
)
from app.storage.local_records import _HANDLE, LocalRecords, download_link, new_handle

log = logging.getLogger(__name__)

# Handles are random 128-bit tokens: the download link works as a capability, and the
# strict pattern means a handle can never name anything outside the storage directory.
MIN_FREE_BYTES = 16 * 1024 * 1024
COPY_BYTES = 1024 * 1024
PARTIAL_PREFIX = ".partial-"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


# ``LocalBackend._store``: makes a stored file from bytes put into one of its folders.
StoreIn = Callable[[str, int, Callable[[Path], None], StoreExtras, str | None], StoredFile]


class LocalBackend:
    """Stores each upload as ``<root>/<handle>/<name>``."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._records = LocalRecords(root)
        # tus: a growing file in its own folder here, like any file (imported here because
        # that module builds on this one's helpers).
        from app.storage.local_resumable import LocalResumable

        self._resumable = LocalResumable(root, self._store)

    def capabilities(self) -> Capabilities:
        records = self._records
        return Capabilities(
            stream=self,
            download=self,
            records=records,
            links=records,
            space=records,
            resumable=self._resumable,
        )

    def location(self) -> str:
        return str(self.root.resolve())

    def start(self) -> None:
        """Create the storage directory and remove what killed uploads left in it."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            message = f"LOCAL_STORAGE_DIR {self.root} is a file, not a directory"
            raise StartupError(message) from None
        except OSError as error:
            raise StartupError(
                f"LOCAL_STORAGE_DIR {self.root} cannot be created: {error.strerror}"
            ) from None
        if not self.root.is_dir():
            raise StartupError(f"LOCAL_STORAGE_DIR {self.root} is not a directory")
        self.sweep()

    def sweep(self) -> int:
        """Delete ``.partial`` files no live upload holds (its writer was killed); return how many.

        Walks only real directories: a symlink under the storage directory is never followed.
        """
        removed = 0
        with contextlib.suppress(OSError), os.scandir(self.root) as folders:
            for folder in folders:
                if not (_HANDLE.fullmatch(folder.name) and folder.is_dir(follow_symlinks=False)):
                    continue
                with contextlib.suppress(OSError), os.scandir(folder.path) as entries:
                    partials = [e.path for e in entries if e.name.startswith(PARTIAL_PREFIX)]
                for partial in partials:
                    if remove_if_abandoned(Path(partial)):
                        removed += 1
                        with contextlib.suppress(OSError):
                            os.rmdir(folder.path)  # only when nothing else is in it
        if removed:
            log.info("removed %d leftover partial file(s) from local storage", removed)
        return removed

    def store(
        self, source: Path, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        # A spooled file on the same file system is hard-linked: it takes no more room,
        # and its bytes already count as used in the free space.
        same_disk = _device(source) == _device(self.root)
        put = functools.partial(self._place, source)
        return self._store(filename, 0 if same_disk else size, put, extras)

    def store_stream(
        self, body: BodyStream, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        return self._store(filename, size, functools.partial(self._write, body), extras)

    def _store(
        self,
        filename: str,
        needed: int,
        put: Callable[[Path], None],
        extras: StoreExtras,
        handle: str | None = None,
    ) -> StoredFile:
        """Run ``put`` on the new file's path, then the commit; ``needed`` is the room it
        takes on this disk; the file's date is served back as Last-Modified. The file is
        listed (has a record) only once made. ``handle`` names a folder that holds the
        bytes already (a finished resumable upload) instead of a new one."""
        mtime, commit = extras.mtime, extras.commit
        fresh = handle is None
        handle = handle or new_handle()
        folder = self.root / handle
        made: list[StoredFile] = []

        def make(fields: Mapping[str, str]) -> StoredFile:
            try:
                self._records.create(handle, filename, (folder / filename).stat().st_size, fields)
            except OSError as error:
                raise _storage_error(error) from error
            made.append(StoredFile(handle, download_link(handle, filename), key=handle))
            return made[0]

        try:
            if fresh:
                if shutil.disk_usage(self.root).free < needed + MIN_FREE_BYTES:
                    raise StorageFull("the local storage disk is full")
                folder.mkdir(mode=0o700)
            put(folder / filename)
            if mtime is not None:
                os.utime(folder / filename, (mtime, mtime), follow_symlinks=False)
            if commit is None:
                return StoredFile(handle=handle, link=download_link(handle, filename))
            stored = commit(make)
        except BaseException as error:
            if not made:  # e.g. the client left mid-stream; once made, the file stays
                shutil.rmtree(folder, ignore_errors=True)
            if isinstance(error, OSError):
                raise _storage_error(error) from error
            raise
        if not made:  # the same bytes are stored already: this copy is not wanted
            shutil.rmtree(folder, ignore_errors=True)
        return stored

    @staticmethod
    def _write(body: BodyStream, target: Path) -> None:
        with _partial_file(target) as out:
            while block := body.read(COPY_BYTES):
                out.write(block)

    @staticmethod
    def _place(source: Path, target: Path) -> None:
        # A hard link is a free copy when the spool is on the same file system; the
        # caller removes its temporary file afterwards either way.
        try:
            os.link(source, target)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            with source.open("rb") as data, _partial_file(target) as out:
                shutil.copyfileobj(data, out, COPY_BYTES)

    def locate(self, handle: str, filename: str) -> Path | None:
        """The stored file for a download link, or None when there is none.

        Only a regular file in a real folder of the storage directory: a symlink is never
        followed (one pointing at /etc would otherwise serve /etc/passwd), and a name the
        file system refuses (too long, a NUL byte) is simply not found.
        """
        if not _HANDLE.fullmatch(handle) or filename in {"", ".", ".."} or "/" in filename:
            return None
        folder = self.root / handle
        path = folder / filename
        try:
            if not stat.S_ISDIR(folder.lstat().st_mode):
                return None
            if not stat.S_ISREG(path.lstat().st_mode):
                return None
        except (OSError, ValueError):
            return None
        return path

    def readiness(self) -> Readiness:
        if not self.root.is_dir() or not _writable(self.root):
            return Readiness(False, "the local storage directory is not writable")
        if shutil.disk_usage(self.root).free < MIN_FREE_BYTES:
            return Readiness(False, "the local storage disk is full")
        return Readiness(True)

    def delete(self, handle: str) -> None:
        if _HANDLE.fullmatch(handle):
            self._records.delete(handle)

    def close(self) -> None:
        """Nothing to release."""


@contextlib.contextmanager
def _partial_file(target: Path) -> Iterator[BinaryIO]:
    """A new file that becomes ``target`` when the block ends without an error.

    It is written in ``target``'s own folder, so a failed upload's cleanup removes it,
    under a short name, so a name at the length limit still fits, and under ``flock``
    until it is renamed, so the start-up sweep of another worker leaves it alone.
    """
    partial = target.parent / f"{PARTIAL_PREFIX}{secrets.token_hex(4)}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    out = os.fdopen(fd, "wb")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield out
        out.flush()
        os.replace(partial, target)
    finally:
        # After a failed write, closing tries the same write again and would fail again,
        # hiding the first error (a full disk): the file is discarded anyway.
        with contextlib.suppress(OSError):
            out.close()


def _writable(directory: Path) -> bool:
    """Whether files can be made in ``directory``; os.access alone says yes to root on a
    read-only file system."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    return not os.statvfs(directory).f_flag & os.ST_RDONLY


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _storage_error(error: OSError) -> Exception:
    """The storage error for a failed disk operation; its message names no path."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("the local storage disk is full")
    if error.errno in _NOT_WRITABLE:
        return StorageUnavailable("the local storage directory is not writable")
    log.error("local store failed: %s", error.strerror)
    return UpstreamRejected("the file could not be written to local storage")
