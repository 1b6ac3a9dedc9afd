"""How full the storage is, known before a body is read.

The figures come from the backend (MEGA's ``uq``: bytes used and allowed) when the
service starts and every ``INDEX_REFRESH_SECONDS``, and move with this process's own
writes in between: a file stored adds its size, a file deleted takes it off. Other
processes' writes reach this one with the next refresh (MEGA pushes no "bytes used"
figure: the SDK too counts its own nodes between quota requests).
"""

from __future__ import annotations

import logging
import threading

from app import metrics
from app.storage.base import Space, SpaceReport, StorageFull

log = logging.getLogger(__name__)


class SpaceTracker:
    """The storage's used and total bytes as this process knows them."""

    def __init__(self, report: SpaceReport | None) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._known: Space | None = None

    @property
    def known(self) -> Space | None:
        """The latest figures; None before the first answer (or without the capability)."""
        return self._known

    def refresh(self) -> Space | None:
        """Ask the backend (blocking); a failure keeps the figures known so far."""
        if self._report is None:
            return None
        space = self._report.space()
        with self._lock:
            self._set(space)
        return space

    def added(self, size: int) -> None:
        self._move(size)

    def removed(self, size: int) -> None:
        self._move(-size)

    def check(self, size: int) -> None:
        """``StorageFull`` when a file of ``size`` bytes cannot fit in what is free."""
        space = self._known
        if space is not None and size > space.free:
            raise StorageFull(
                f"the storage is full: {space.free} bytes free of {space.total}, "
                f"the file needs {size}"
            )

    def _move(self, delta: int) -> None:
        with self._lock:
            space = self._known
            if space is not None:
                self._set(Space(used=max(0, space.used + delta), total=space.total))

    def _set(self, space: Space) -> None:
        self._known = space
        metrics.storage_space(space.used, space.total)
