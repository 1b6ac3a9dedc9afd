"""Request body -> a storage worker thread, while it arrives: no temporary file.

The event loop feeds the bytes it receives into a small bounded queue; the backend's
worker thread reads them as a blocking stream. The queue is what bounds memory, and a
full queue slows the client down (back-pressure) instead of growing. The sha256 is
taken on the reading side, in the worker thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import AsyncIterator

from anyio import to_thread
from starlette.requests import ClientDisconnect

BLOCK_BYTES = 1024 * 1024
QUEUE_BLOCKS = 4
_PUT_POLL_S = 0.2


class SourceGone(Exception):
    """The client stopped sending before the announced end of the body."""

    def __init__(self, reason: str = "the client closed the connection") -> None:
        super().__init__(reason)


class ClientTooSlow(SourceGone):
    """The client sent nothing for too long (CLIENT_IDLE_TIMEOUT_SECONDS)."""

    def __init__(self, idle_s: float) -> None:
        super().__init__(f"the client sent nothing for {idle_s:g} s")


class _ReaderStopped(Exception):
    """The reading side finished or gave up; the rest of the body is not wanted."""


_EOF = b""


class BodyRelay:
    """A bounded, one-way byte stream from the event loop to one reader thread."""

    def __init__(self, size: int, idle_s: float, queue_blocks: int = QUEUE_BLOCKS) -> None:
        self.size = size
        self._idle_s = idle_s
        self._queue: queue.Queue[bytes | SourceGone] = queue.Queue(queue_blocks)
        self._stopped = threading.Event()
        self._block = b""
        self._offset = 0
        self._hash = hashlib.sha256()
        self._read = 0
        self._received = 0
        self._ended = False

    # -- the event loop's side -------------------------------------------------

    async def feed(self, chunks: AsyncIterator[bytes]) -> None:
        """Pass the body on in blocks; never raises, problems reach the reader."""
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            async for chunk in chunks:
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= BLOCK_BYTES:
                    await self._put(b"".join(pending))  # the one copy on this side
                    pending.clear()
                    pending_bytes = 0
            if pending:
                await self._put(b"".join(pending))
            await self._put(_EOF)
        except ClientDisconnect:
            with contextlib.suppress(_ReaderStopped):
                await self._put(SourceGone())
        except ClientTooSlow as slow:
            with contextlib.suppress(_ReaderStopped):
                await self._put(slow)
        except _ReaderStopped:
            pass

    async def _put(self, item: bytes | SourceGone) -> None:
        if self._stopped.is_set():
            raise _ReaderStopped
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            await to_thread.run_sync(self._put_waiting, item)

    def _put_waiting(self, item: bytes | SourceGone) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue
        raise _ReaderStopped

    def stop(self) -> None:
        """The reader is done (finished or failed): release a producer waiting for room."""
        self._stopped.set()

    # -- the worker thread's side ----------------------------------------------

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of what has arrived, at least one; b"" only at the end.

        Raises SourceGone if the client left. A whole block is handed over as it is,
        without a copy, whenever it fits.
        """
        if self._offset >= len(self._block):
            if self._ended:
                return b""
            self._block, self._offset = self._next_block(), 0
        if self._offset == 0 and len(self._block) <= size:
            data = self._block
        else:
            data = self._block[self._offset : self._offset + size]
        self._offset += len(data)
        self._hash.update(data)
        self._read += len(data)
        return data

    def _next_block(self) -> bytes:
        try:
            # A backstop: the feeding side already gives up on an idle client.
            item = self._queue.get(timeout=2 * self._idle_s)
        except queue.Empty:
            raise ClientTooSlow(2 * self._idle_s) from None
        if isinstance(item, SourceGone):
            raise item
        if item == _EOF:
            self._ended = True
            if self._received < self.size:
                raise SourceGone("the body ended before its Content-Length")
        self._received += len(item)
        return item

    @property
    def bytes_read(self) -> int:
        return self._read

    def sha256(self) -> str:
        return self._hash.hexdigest()
