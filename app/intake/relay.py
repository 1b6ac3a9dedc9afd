"""Request body -> a storage worker thread, while it arrives, replayable from a copy.

The receiving side (``app.intake.body``) hands the file's bytes to ``BodyRelay.put`` from
a worker thread; the backend's own worker thread reads them with ``read`` as a blocking
stream. A small bounded queue between the two bounds memory, and a full queue stops the
receiving side, which stops reading the socket: the client is slowed down
(back-pressure) instead of the server growing. That queue, plus what the backend holds
in flight, is the window by which the client's progress may run ahead of storage.

When the receiving side also writes the bytes to a private temporary copy (before they
are put here), the stream can be rewound: ``rewind`` replays what was already read from
the copy, then carries on with the live body. MEGA's "start again on a fresh upload URL"
is served that way without asking the client to send anything again.

The last piece of the announced size is held back until the receiving side calls
``finish`` (the whole body arrived and made sense): a backend therefore never completes
a file from a body that later turns out to be different from what it announced.
"""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import threading
from pathlib import Path

BLOCK_BYTES = 1024 * 1024
QUEUE_BLOCKS = 4
# How often a blocked side looks up to see whether the other side gave up.
_POLL_S = 0.2


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Keep glibc from mapping and unmapping memory for every body buffer; True if done.

    A body arrives in pieces of up to 256 KiB and travels in blocks of about 1 MiB. By
    default glibc serves such sizes with a fresh mmap and returns them with munmap, so
    the kernel faults in and zeroes every page again for every piece: measured, that
    tripled the CPU an upload costs (a server that only drains a body: 1.36 CPU-s/GiB,
    0.52 with these settings). Served from the heap, the same few MiB are reused. The
    heap keeps at most the trim threshold of free memory before it gives it back.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    settings = (
        (_M_MMAP_THRESHOLD, 4 * 1024 * 1024),
        (_M_TRIM_THRESHOLD, 32 * 1024 * 1024),
        (_M_TOP_PAD, 16 * 1024 * 1024),
    )
    return all(mallopt(option, value) == 1 for option, value in settings)


class PredictionMissed(Exception):
    """The file turned out to be a different size than the one streamed to storage.

    A multipart body's file size is predicted from its Content-Length; fields after the
    file or bytes after the closing boundary make the prediction wrong. Whatever storage
    received is abandoned and the file is stored again from the temporary copy.
    """

    def __init__(self) -> None:
        super().__init__("the file part is not the size predicted from the Content-Length")


_EOF = b""


class BodyRelay:
    """A bounded, one-way byte stream from a receiving thread to one reading thread."""

    def __init__(
        self, size: int, copy: Path | None = None, queue_blocks: int = QUEUE_BLOCKS
    ) -> None:
        self.size = size
        self._copy = copy
        self._queue: queue.Queue[bytes] = queue.Queue(queue_blocks)
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._fed = 0
        self._tail: list[bytes] = []
        # Reading side.
        self._block = b""
        self._offset = 0
        self._taken = 0  # bytes taken from the queue so far: what a replay covers
        self._ended = False
        self._replay_fd: int | None = None
        self._replay_at = 0
        self._replay_end = 0

    # -- the receiving side (a worker thread) --------------------------------------

    def put(self, data: bytes) -> None:
        """Pass ``data`` on, waiting while the queue is full; a no-op once either side gave up."""
        if not data or self._stopped.is_set():
            return
        fed = self._fed + len(data)
        if fed > self.size:
            self.fail(PredictionMissed())
            return
        self._fed = fed
        if fed == self.size:
            self._tail.append(data)  # held until the body is known to be complete
            return
        self._enqueue(data)

    def finish(self) -> None:
        """The whole body arrived and was valid: release the held tail and the end."""
        if self._fed != self.size:
            self.fail(PredictionMissed())
            return
        for piece in self._tail:
            self._enqueue(piece)
        self._tail.clear()
        self._enqueue(_EOF)

    def fail(self, error: BaseException) -> None:
        """The body cannot be delivered: the reader raises ``error`` at its next read."""
        if self._error is None:
            self._error = error
        self._stopped.set()

    def _enqueue(self, item: bytes) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def stop(self) -> None:
        """The reader is done (finished or failed): release the receiving side."""
        self._stopped.set()
        if self._replay_fd is not None:
            os.close(self._replay_fd)
            self._replay_fd = None

    # -- the reading side (the backend's worker thread) ----------------------------

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, at least one; b"" only at the end.

        Raises what the receiving side failed with (the client left, the prediction
        missed). A whole block is handed over as it is, without a copy, when it fits.
        """
        if self._error is not None:
            raise self._error
        if self._replay_at < self._replay_end:
            return self._replayed(size)
        if self._offset >= len(self._block):
            if self._ended:
                return b""
            self._block, self._offset = self._next_block(), 0
            self._taken += len(self._block)
        if self._offset == 0 and len(self._block) <= size:
            data = self._block
        else:
            data = self._block[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    def rewind(self) -> bool:
        """Start again from byte 0: replay what was read from the copy, then go on live."""
        if self._copy is None:
            return False
        if self._replay_fd is None:
            self._replay_fd = os.open(self._copy, os.O_RDONLY)
        self._replay_at = 0
        # Everything taken from the queue, minus the unread rest of the current block,
        # which is still delivered from memory after the replay.
        self._replay_end = self._taken - (len(self._block) - self._offset)
        return True

    def _replayed(self, size: int) -> bytes:
        assert self._replay_fd is not None
        wanted = min(size, self._replay_end - self._replay_at)
        data = os.pread(self._replay_fd, wanted, self._replay_at)
        if not data:
            raise OSError("the upload's temporary copy is shorter than what was streamed")
        self._replay_at += len(data)
        return data

    def _next_block(self) -> bytes:
        # No timeout of its own: the receiving side times out an idle or too slow client
        # and fails the relay; this only polls for that.
        while True:
            if self._error is not None:
                raise self._error
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item == _EOF:
                self._ended = True
            return item
