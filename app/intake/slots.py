"""How many uploads one instance runs at once, counted across all its worker processes."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path

import anyio

from app import metrics
from app.intake.errors import NoFreeSlot


class Slot:
    """One held upload slot; ``release`` is idempotent."""

    def __init__(self, slots: UploadSlots, holder: socket.socket | None) -> None:
        self._slots = slots
        self._holder = holder
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._holder is not None:
            self._holder.close()
        else:
            self._slots._local_free += 1


class UploadSlots:
    """``total`` upload slots shared by the worker processes of one instance.

    Under gunicorn, connections do not spread evenly over the workers, so a count per
    worker turns uploads away while other workers have room. A slot is a bound socket in
    Linux's abstract namespace: only one process can hold a name, the kernel frees it
    when its holder exits (even on kill -9), and no file is left behind. The names are
    keyed on the user and the spool directory: the processes of one instance share them,
    other instances on the same host do not. Elsewhere (not Linux), each process counts
    its own uploads.

    A request that finds every slot taken waits up to ``wait_s`` for one before it is
    turned away: a burst of uploads queues briefly instead of failing at once.
    """

    POLL_S = 0.05

    def __init__(self, directory: Path, total: int, wait_s: float) -> None:
        self.total = total
        self.wait_s = wait_s
        key = hashlib.sha256(f"{os.geteuid()}:{directory.absolute()}".encode()).hexdigest()
        self._names = [f"\0paimon-upload-slot-{key[:24]}-{i}" for i in range(total)]
        self._shared = sys.platform.startswith("linux")
        self._local_free = total

    def try_acquire(self) -> Slot | None:
        """A held slot, or None when all are taken. Never blocks."""
        if not self._shared:
            if self._local_free <= 0:
                return None
            self._local_free -= 1
            return Slot(self, None)
        for name in self._names:
            holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                holder.bind(name)
            except OSError:
                holder.close()
                continue
            return Slot(self, holder)
        return None

    async def acquire(self) -> Slot:
        """A held slot, waiting up to ``wait_s`` for one; ``NoFreeSlot`` when none came free."""
        started = time.monotonic()
        while True:
            slot = self.try_acquire()
            if slot is not None:
                metrics.slot_waited(time.monotonic() - started)
                return slot
            if time.monotonic() - started >= self.wait_s:
                metrics.slot_refused()
                raise NoFreeSlot()
            await anyio.sleep(self.POLL_S)
