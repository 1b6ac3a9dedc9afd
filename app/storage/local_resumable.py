"""Resumable uploads on local disk: the file grows in place, in its own folder of the
storage directory (that is this backend's storage), until it is complete.

The growing file is ``<root>/<handle>/.tus-<random>``: the start-up sweep of ``.partial``
files leaves it alone (it is not held open between pieces), nothing serves it (its name
is not known outside the upload's state), and it becomes ``<root>/<handle>/<name>`` with
one rename when the upload is finished. Nothing is written to the temporary directory.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import shutil
from pathlib import Path

from app.storage.base import (
    NO_EXTRAS,
    OpenUpload,
    PieceSource,
    Progress,
    StorageFull,
    StoredFile,
    StoreExtras,
    UpstreamRejected,
)
from app.storage.local import _HANDLE, COPY_BYTES, MIN_FREE_BYTES, StoreIn, _storage_error
from app.storage.local_records import new_handle

GROWING_PREFIX = ".tus-"
# Tell the caller what is held at least this often, so that a failure loses little.
PROGRESS_BYTES = 4 * 1024 * 1024


class LocalResumable:
    """The local backend's ``Resumable`` capability, under its storage directory."""

    longest_open_s = math.inf  # nothing outside forgets an open upload here

    def __init__(self, root: Path, store: StoreIn) -> None:
        """``store`` makes a stored file of what is in one of the storage's folders (the
        backend's own way: its record, its commit, its cleanup)."""
        self.root = root
        self._store = store

    def begin(self, size: int) -> OpenUpload:
        handle = new_handle()
        folder = self.root / handle
        growing = f"{GROWING_PREFIX}{secrets.token_hex(4)}"
        try:
            if shutil.disk_usage(self.root).free < size + MIN_FREE_BYTES:
                raise StorageFull("the local storage disk is full")
            folder.mkdir(mode=0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            os.close(os.open(folder / growing, flags, 0o600))
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise _storage_error(error) from error
        return OpenUpload(size, 0, {"handle": handle, "file": growing})

    def least_piece(self, upload: OpenUpload) -> int:
        """Every byte is stored as it comes."""
        return 1

    def append(
        self, upload: OpenUpload, source: PieceSource, length: int, progress: Progress
    ) -> OpenUpload:
        offset = told = upload.offset
        end = upload.offset + min(length, upload.size - upload.offset)
        try:
            fd = os.open(self._growing(upload), os.O_WRONLY | os.O_NOFOLLOW)
        except OSError as error:
            raise _storage_error(error) from error
        try:
            while offset < end:
                block = source.read(min(COPY_BYTES, end - offset))
                if not block:
                    raise EOFError("the piece ended before its announced length")
                try:
                    _write_at(fd, block, offset)
                except OSError as error:
                    raise _storage_error(error) from error
                offset += len(block)
                if offset - told >= PROGRESS_BYTES:
                    progress(OpenUpload(upload.size, offset, upload.state))
                    told = offset
        finally:
            os.close(fd)
            if offset != told:
                # What was written before the client left is kept.
                progress(OpenUpload(upload.size, offset, upload.state))
        return OpenUpload(upload.size, offset, upload.state)

    def finish(
        self, upload: OpenUpload, filename: str, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        growing = self._growing(upload)
        try:
            if growing.stat().st_size != upload.size:
                # Only a machine that lost written data gets here: never store a short file.
                raise UpstreamRejected("the file could not be written to local storage")
        except OSError as error:
            raise _storage_error(error) from error
        return self._store(
            filename,
            0,
            functools.partial(os.replace, growing),
            extras,
            str(upload.state["handle"]),
        )

    def abandon(self, upload: OpenUpload) -> None:
        handle = str(upload.state.get("handle", ""))
        if _HANDLE.fullmatch(handle):
            shutil.rmtree(self.root / handle, ignore_errors=True)

    def _growing(self, upload: OpenUpload) -> Path:
        handle, name = str(upload.state["handle"]), str(upload.state["file"])
        if not _HANDLE.fullmatch(handle) or not name.startswith(GROWING_PREFIX) or "/" in name:
            raise UpstreamRejected("the upload's state is damaged")
        return self.root / handle / name


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
