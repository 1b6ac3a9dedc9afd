"""The local backend's records: a small JSON file beside each stored file.

A file stored as ``<root>/<folder>/<name>`` has its record in ``<root>/<id>.json``; the id
is the folder's first name and never changes. The folder's name is the file's public
link (``/files/<folder>/<name>``): taking the link away renames the folder to
``.unlinked-<id>`` (a name no link can reach), and a new link renames it to a fresh
random handle. Files stored before records existed have no JSON: they are still served
by their links, but not listed (a folder without a record may also be an upload that is
not finished).

Every JSON file is written whole to a temporary file and renamed over the old one, so a
reader sees the old record or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.storage.base import FileRecord, Space

FORMAT_VERSION = 1
UNLINKED_PREFIX = ".unlinked-"
LOCK_DIR = ".locks"
_HANDLE = re.compile(r"[A-Za-z0-9_-]{22}")


def new_handle() -> str:
    """A random 128-bit folder name: a download link works as a capability."""
    return secrets.token_urlsafe(16)


def download_link(folder: str, name: str) -> str:
    return f"/files/{folder}/{quote(name, safe='')}"


class LocalRecords:
    """Records, links and space of the files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def lock_dir(self) -> Path:
        return self.root / LOCK_DIR

    # -- the record of one file ----------------------------------------------------

    def create(self, file_id: str, name: str, size: int, fields: Mapping[str, str]) -> FileRecord:
        """Write the record of a file just stored in the folder ``file_id``."""
        record = {
            "version": FORMAT_VERSION,
            "name": name,
            "size": size,
            "created": int(os.stat(self.root / file_id / name).st_mtime),
            "folder": file_id,
            "fields": dict(fields),
        }
        self._write(file_id, record)
        return _file_record(file_id, record)

    def read_record(self, file: FileRecord) -> FileRecord | None:
        record = self._load(file.id)
        if record is None or not self._present(file.id, record):
            return None
        return _file_record(file.id, record)

    def write_record(self, file: FileRecord, fields: Mapping[str, str]) -> bool:
        record = self._load(file.id)
        if record is None:
            return False
        record["fields"] = dict(fields)
        self._write(file.id, record)
        return True

    def delete(self, file_id: str) -> None:
        """Remove the file (its link first: the folder) and then its record."""
        if not _HANDLE.fullmatch(file_id):
            return
        record = self._load(file_id)
        folder = _folder_of(file_id, record) if record is not None else file_id
        shutil.rmtree(self.root / folder, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{file_id}.json").unlink()

    # -- listing -------------------------------------------------------------------

    def list_records(self) -> list[FileRecord]:
        """Every stored file with its record (one scan of the storage directory)."""
        files = []
        with os.scandir(self.root) as entries:
            ids = [e.name[:-5] for e in entries if e.name.endswith(".json")]
        for file_id in ids:
            if not _HANDLE.fullmatch(file_id):
                continue
            record = self._load(file_id)
            if record is not None and self._present(file_id, record):
                files.append(_file_record(file_id, record))
        return files

    def _present(self, file_id: str, record: dict[str, Any]) -> bool:
        path = self.root / _folder_of(file_id, record) / record["name"]
        try:
            return stat.S_ISREG(path.lstat().st_mode)
        except OSError:
            return False

    # -- links -----------------------------------------------------------------------

    def revoke_link(self, file: FileRecord) -> None:
        self._move(file.id, UNLINKED_PREFIX + file.id)

    def make_link(self, file: FileRecord) -> str:
        record = self._record(file.id)
        if record["folder"]:
            return download_link(record["folder"], record["name"])
        return download_link(self._move(file.id, new_handle()), record["name"])

    def _move(self, file_id: str, folder: str) -> str:
        """Rename the file's folder to ``folder`` (its link with it); the new folder."""
        record = self._record(file_id)
        current = _folder_of(file_id, record)
        if current != folder:
            os.rename(self.root / current, self.root / folder)
        record["folder"] = "" if folder.startswith(UNLINKED_PREFIX) else folder
        self._write(file_id, record)
        return folder

    # -- space -------------------------------------------------------------------------

    def space(self) -> Space:
        usage = shutil.disk_usage(self.root)
        return Space(used=usage.total - usage.free, total=usage.total)

    # -- files -------------------------------------------------------------------------

    def _record(self, file_id: str) -> dict[str, Any]:
        record = self._load(file_id)
        if record is None:
            raise FileNotFoundError(file_id)
        return record

    def _load(self, file_id: str) -> dict[str, Any] | None:
        if not _HANDLE.fullmatch(file_id):
            return None  # never a path outside the storage directory
        try:
            with open(self.root / f"{file_id}.json", "rb") as source:
                record = json.load(source)
        except (OSError, ValueError):
            return None
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and isinstance(record.get("size"), int)
            and isinstance(record.get("fields"), dict)
        ):
            return None
        return record

    def _write(self, file_id: str, record: dict[str, Any]) -> None:
        temporary = self.root / f".{file_id}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temporary, "x", encoding="utf-8") as out:
                json.dump(record, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.root / f"{file_id}.json")
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def _folder_of(file_id: str, record: dict[str, Any]) -> str:
    folder = record.get("folder")
    return folder if isinstance(folder, str) and folder else UNLINKED_PREFIX + file_id


def _file_record(file_id: str, record: dict[str, Any]) -> FileRecord:
    folder = record.get("folder") or ""
    fields = {k: v for k, v in record["fields"].items() if isinstance(v, str)}
    return FileRecord(
        id=file_id,
        name=record["name"],
        size=record["size"],
        created=int(record.get("created") or 0),
        link=download_link(folder, record["name"]) if folder else None,
        key=file_id,
        fields=fields,
    )
