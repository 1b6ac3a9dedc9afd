"""Local-disk backend: files under LOCAL_STORAGE_DIR, served back by the download route."""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from app.storage.base import BodyStream, Readiness, StorageFull, StoredFile, UpstreamRejected

log = logging.getLogger(__name__)

# Handles are random 128-bit tokens: the download link works as a capability, and the
# strict pattern means a handle can never name anything outside the storage directory.
_HANDLE = re.compile(r"[A-Za-z0-9_-]{22}")
MIN_FREE_BYTES = 16 * 1024 * 1024
COPY_BYTES = 1024 * 1024


class LocalBackend:
    """Stores each upload as ``<root>/<handle>/<name>``."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def start(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def store(self, source: Path, filename: str, size: int) -> StoredFile:
        return self._store(filename, size, lambda target: self._place(source, target))

    def store_stream(self, body: BodyStream, filename: str, size: int) -> StoredFile:
        return self._store(filename, size, lambda target: self._write(body, target))

    def _store(self, filename: str, size: int, put: Callable[[Path], None]) -> StoredFile:
        if shutil.disk_usage(self.root).free < size + MIN_FREE_BYTES:
            raise StorageFull("the local storage disk is full")
        handle = secrets.token_urlsafe(16)
        folder = self.root / handle
        folder.mkdir(mode=0o700)
        try:
            put(folder / filename)
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the local storage disk is full") from error
            log.error("local store failed: %s", error.strerror)
            raise UpstreamRejected("the file could not be written to local storage") from error
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # e.g. the client left mid-stream
            raise
        return StoredFile(handle=handle, link=f"/files/{handle}/{quote(filename, safe='')}")

    @staticmethod
    def _write(body: BodyStream, target: Path) -> None:
        partial = _partial_beside(target)
        with partial.open("xb") as out:
            while block := body.read(COPY_BYTES):
                out.write(block)
        os.replace(partial, target)

    @staticmethod
    def _place(source: Path, target: Path) -> None:
        # A hard link is a free copy when the spool is on the same file system; the
        # caller removes its temporary file afterwards either way.
        try:
            os.link(source, target)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            partial = _partial_beside(target)
            shutil.copyfile(source, partial)
            os.replace(partial, target)

    def locate(self, handle: str, filename: str) -> Path | None:
        """The stored file for a download link, or None when there is none."""
        if not _HANDLE.fullmatch(handle):
            return None
        path = self.root / handle / filename
        if path.parent != self.root / handle or not path.is_file():
            return None
        return path

    def readiness(self) -> Readiness:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            return Readiness(False, "the local storage directory is not writable")
        if shutil.disk_usage(self.root).free < MIN_FREE_BYTES:
            return Readiness(False, "the local storage disk is full")
        return Readiness(True)

    def delete(self, handle: str) -> None:
        if _HANDLE.fullmatch(handle):
            shutil.rmtree(self.root / handle, ignore_errors=True)

    def close(self) -> None:
        """Nothing to release."""


def _partial_beside(target: Path) -> Path:
    """Where ``target`` is written before it is complete: in its own folder, so a failed
    upload's cleanup removes it, and short, so a name at the length limit still fits."""
    return target.parent / f".partial-{secrets.token_hex(4)}"
