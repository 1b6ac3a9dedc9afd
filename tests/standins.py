"""Stand-in storage backends for failure paths that a real local disk cannot produce on demand.

They implement the same small interface as the real backends; the HTTP layer under test
is the real one.
"""

from __future__ import annotations

import threading
from pathlib import Path

from app.storage.base import (
    NO_EXTRAS,
    BodyStream,
    Capabilities,
    Readiness,
    StorageError,
    StoredFile,
    StoreExtras,
)


class FailingBackend:
    """Every upload fails with the given error."""

    name = "local"

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.seen: list[tuple[Path, str, int]] = []

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def location(self) -> str:
        return "nowhere (a stand-in)"

    def start(self) -> None:
        pass

    def store(
        self, source: Path, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        self.seen.append((source, filename, size))
        assert source.exists(), "the spooled file must exist while the backend works"
        raise self.error

    def readiness(self) -> Readiness:
        return Readiness(False, "stand-in backend never ready")

    def delete(self, handle: str) -> None:
        pass

    def close(self) -> None:
        pass


class GatedBackend:
    """Blocks inside ``store`` until released: proves where storage work runs."""

    name = "local"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def location(self) -> str:
        return "nowhere (a stand-in)"

    def start(self) -> None:
        pass

    def store(
        self, source: Path, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        self.sizes.append(source.stat().st_size)
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise StorageError("gate never opened")
        return StoredFile(handle="gated", link="/nowhere")

    def readiness(self) -> Readiness:
        return Readiness(True)

    def delete(self, handle: str) -> None:
        pass

    def close(self) -> None:
        self.release.set()


class FailingStreamBackend(FailingBackend):
    """Takes part of a streamed body, then fails: the sender must not be left hanging."""

    def __init__(self, error: Exception, read_first: int) -> None:
        super().__init__(error)
        self.read_first = read_first
        self.received = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(stream=self)

    def store_stream(
        self, body: BodyStream, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        while self.received < self.read_first:
            block = body.read(min(65536, self.read_first - self.received))
            if not block:
                break
            self.received += len(block)
        raise self.error
