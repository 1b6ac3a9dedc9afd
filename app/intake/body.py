"""Request bodies: received on the event loop, taken in worker threads.

The event loop only moves bytes: it gathers what the socket delivers into blocks and
hands each block to an ``Intake`` in a worker thread, which parses it (multipart,
``app.intake.multipart``), writes the file's bytes to the upload's temporary copy,
hashes them, charges them to the caller's quota and passes them on to the storage
backend's relay. Junk (empty parts, an epilogue, huge headers) is therefore never parsed
on the event loop, and every byte of the body counts against a limit, whatever its
framing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio import to_thread

from app.intake.errors import ClientTooSlow, SourceGone, UploadTooLarge
from app.intake.relay import BLOCK_BYTES, BodyRelay
from app.intake.spool import SpoolFile

# A slow client's bytes are passed on after this long, not only in whole blocks, so the
# body keeps moving whatever its rate.
FLUSH_AFTER_S = 0.25


@dataclass(frozen=True, slots=True)
class Pace:
    """How slowly a client may send: nothing for ``idle_s`` is too slow, and so is less
    than ``min_bytes_per_second`` on average once it has been sending for ``idle_s``
    (0 turns the average off)."""

    idle_s: float
    min_bytes_per_second: int


class Meter(Protocol):
    """What counts a file's bytes against the caller's allowance as they arrive."""

    def need(self, total: int) -> None:
        """The file has ``total`` bytes so far; raise when the allowance has no room."""
        ...


async def paced(chunks: AsyncIterable[bytes], pace: Pace) -> AsyncIterable[bytes]:
    """``chunks`` as they arrive; ``ClientTooSlow`` when the client is too slow (``pace``).

    Only time spent waiting for the client counts: time the server spends holding the
    client back (storage slower than the client) is not the client's.
    """
    idle_s, min_rate = pace.idle_s, pace.min_bytes_per_second
    source = aiter(chunks)
    received = 0
    waited = 0.0
    while True:
        wait = idle_s
        if min_rate:
            # By client time t the body must hold min_rate * t bytes (after a grace).
            wait = min(wait, max(0.0, max(idle_s, received / min_rate) - waited))
        started = time.monotonic()
        with anyio.move_on_after(wait) as waiting:
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                return
        waited += time.monotonic() - started
        if waiting.cancelled_caught:
            if wait < idle_s:
                raise ClientTooSlow(
                    idle_s, f"the client sent the body slower than {min_rate} bytes/s"
                )
            raise ClientTooSlow(idle_s)
        received += len(chunk)
        yield chunk


async def pump(
    chunks: AsyncIterable[bytes],
    intake: Intake,
    pace: Pace,
    after_block: Callable[[], None] = lambda: None,
) -> None:
    """Feed the whole body to ``intake`` in blocks, each taken in a worker thread.

    ``intake.take`` may wait while storage catches up; meanwhile the socket is not read,
    which slows the client down (back-pressure). When the body stops early, the intake's
    relay (if it has one by then) fails too, so that the worker thread reading it ends:
    with the error, or with SourceGone when the request was cancelled. The error goes on.
    """
    try:
        await _feed(chunks, intake, pace, after_block)
    except Exception as error:
        intake.fail(error)
        raise
    except BaseException:
        intake.fail(SourceGone("the upload was cancelled"))
        raise


async def _feed(
    chunks: AsyncIterable[bytes], intake: Intake, pace: Pace, after_block: Callable[[], None]
) -> None:
    pending: list[bytes] = []
    pending_bytes = 0
    last = time.monotonic()
    async for chunk in paced(chunks, pace):
        pending.append(chunk)
        pending_bytes += len(chunk)
        if pending_bytes >= BLOCK_BYTES or time.monotonic() - last >= FLUSH_AFTER_S:
            await to_thread.run_sync(intake.take, b"".join(pending))
            pending.clear()
            pending_bytes = 0
            last = time.monotonic()
            after_block()
    if pending:
        await to_thread.run_sync(intake.take, b"".join(pending))
    await to_thread.run_sync(intake.end)


class Intake:
    """One upload's body on the worker-thread side: the file's bytes to the copy and relay.

    ``limit`` is the largest file the caller may store (the admission's decision);
    ``meter`` charges the bytes to its quota as they arrive. ``relay`` is set once the
    file's size is known and the bytes can be streamed to storage; ``copy`` (when there
    is one) receives every byte of the file either way.
    """

    def __init__(
        self,
        limit: int,
        copy: SpoolFile | None,
        relay: BodyRelay | None,
        meter: Meter | None = None,
    ) -> None:
        self.limit = limit
        self.copy = copy
        self.relay = relay
        self.meter = meter
        self.filename: str | None = None
        self.size = 0
        self._hash = hashlib.sha256()

    def take(self, block: bytes) -> None:
        """The next block of the body (blocking: a worker thread)."""
        self._file_data(block)

    def fail(self, error: BaseException) -> None:
        """The body stopped early: the relay's reader gets ``error``."""
        if self.relay is not None:
            self.relay.fail(error)

    def end(self) -> None:
        """The body is complete."""
        if self.relay is not None:
            self.relay.finish()

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _file_data(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(self.limit)
        if self.meter is not None:
            self.meter.need(self.size)
        if self.copy is not None:
            self.copy.write(data)  # before the relay: a replay reads what was relayed
        self._hash.update(data)
        if self.relay is not None:
            self.relay.put(data if isinstance(data, bytes) else bytes(data))
