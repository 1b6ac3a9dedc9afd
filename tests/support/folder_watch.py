"""Proof that a process writes nothing into a folder: every file made, written or moved
into the folder's tree (Linux inotify, so even a file that lives for a microsecond is
seen), and every file under it that the process holds open (``/proc/<pid>/fd``, which
also shows unnamed ``O_TMPFILE`` files)."""

from __future__ import annotations

import ctypes
import os
import select
import struct
import sys
import threading
from pathlib import Path

from tests.support.closing import ClosedOnExit

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_WATCHED = IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB
_EVENT = struct.Struct("iIII")
POLL_S = 0.02


class FolderWatch(ClosedOnExit):
    """Watch ``folder`` (and what ``pid`` holds open under it) until ``close``; ``seen``
    lists what happened there."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("inotify is Linux only")
        self.folder = folder.resolve()
        self.pid = pid
        self.seen: list[str] = []
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: dict[int, Path] = {}
        for path in [self.folder, *(p for p in self.folder.rglob("*") if p.is_dir())]:
            self._add(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _add(self, path: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, str(path).encode(), _WATCHED)
        if wd >= 0:
            self._dirs[wd] = path

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], POLL_S)
            if ready:
                self._read_events()
            self._check_open_files()
        self._read_events()

    def _read_events(self) -> None:
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        at = 0
        while at + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0").decode()
            at += _EVENT.size + length
            path = self._dirs.get(wd, self.folder) / name
            self.seen.append(f"{_kind(mask)} {path}")
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self._add(path)

    def _check_open_files(self) -> None:
        if self.pid is None:
            return
        fds = Path(f"/proc/{self.pid}/fd")
        try:
            links = [os.readlink(fd) for fd in fds.iterdir()]
        except OSError:
            return  # the process ended, or a descriptor closed while listed
        for link in links:
            if link.startswith(str(self.folder) + "/"):
                entry = f"open {link}"
                if entry not in self.seen:
                    self.seen.append(entry)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)


def _kind(mask: int) -> str:
    for bit, name in (
        (IN_CREATE, "created"),
        (IN_MOVED_TO, "moved in"),
        (IN_MODIFY, "written"),
        (IN_CLOSE_WRITE, "closed after writing"),
        (IN_ATTRIB, "changed"),
    ):
        if mask & bit:
            return name
    return hex(mask)
