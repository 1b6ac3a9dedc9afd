"""Request bodies: received on the event loop, parsed and written in worker threads.

The event loop only moves bytes: it gathers what the socket delivers into blocks and
hands each block to an ``Intake`` in a worker thread, which parses it (multipart), writes
the file's bytes to the upload's temporary copy, hashes them and passes them on to the
storage backend's relay. Junk (empty parts, an epilogue, huge headers) is therefore never
parsed on the event loop, and every byte of the body counts against the size cap,
whatever its framing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from email.message import Message

import anyio
from anyio import to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.api.errors import ApiError
from app.relay import BLOCK_BYTES, BodyRelay, ClientTooSlow, PredictionMissed
from app.spool import SpoolFile, UploadTooLarge

FILE_FIELD = "file"
# Room for boundaries, part headers and small form fields beside the file.
MULTIPART_OVERHEAD = 64 * 1024
# A slow client's bytes are passed on after this long, not only in whole blocks, so the
# body keeps moving whatever its rate.
FLUSH_AFTER_S = 0.25


def check_declared_length(request: Request, limit: int, overhead: int = 0) -> int | None:
    """The body's Content-Length; refuse one already over the limit, before reading it.

    ``overhead`` is what the body may carry beside the file itself (multipart framing).
    """
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise ApiError(400, "bad_request", "the Content-Length header is not a number")
    if int(declared) > limit + overhead:
        raise ApiError(
            413,
            "too_large",
            f"the file is larger than the limit of {limit} bytes",
            {"Connection": "close"},
        )
    return int(declared)


def multipart_boundary(request: Request) -> bytes:
    """The boundary of a multipart/form-data body; 415 or 400 for anything else."""
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the file as multipart/form-data in the field {FILE_FIELD!r}",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "the multipart Content-Type has no boundary")
    return boundary


async def body_chunks(request: Request, cap: int, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, at most ``cap`` bytes (else 413 naming ``limit``).

    ClientTooSlow when the client sends nothing for CLIENT_IDLE_TIMEOUT_SECONDS, or, once
    it has been sending for that long, averages less than CLIENT_MIN_BYTES_PER_SECOND.
    Only time spent waiting for the client counts: time the server spends holding the
    client back (storage slower than the client) is not the client's.
    """
    settings = request.app.state.services.settings
    idle_s = settings.client_idle_timeout_seconds
    min_rate = settings.client_min_bytes_per_second
    chunks = request.stream().__aiter__()
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
                chunk = await chunks.__anext__()
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
        if received > cap:
            raise UploadTooLarge(limit)
        yield chunk


async def pump(
    request: Request,
    intake: Intake,
    cap: int,
    limit: int,
    after_block: Callable[[], None],
) -> None:
    """Feed the whole body to ``intake`` in blocks, each taken in a worker thread.

    ``intake.take`` may wait while storage catches up; meanwhile the socket is not read,
    which slows the client down (back-pressure).
    """
    pending: list[bytes] = []
    pending_bytes = 0
    last = time.monotonic()
    async for chunk in body_chunks(request, cap, limit):
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

    ``relay`` is set once the file's size is known and the bytes can be streamed to
    storage; ``copy`` (when there is one) receives every byte of the file either way.
    """

    def __init__(self, limit: int, copy: SpoolFile | None, relay: BodyRelay | None) -> None:
        self.limit = limit
        self.copy = copy
        self.relay = relay
        self.filename: str | None = None
        self.size = 0
        self._hash = hashlib.sha256()

    def take(self, block: bytes) -> None:
        """The next block of the body (blocking: a worker thread)."""
        self._file_data(block)

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
        if self.copy is not None:
            self.copy.write(data)  # before the relay: a replay reads what was relayed
        self._hash.update(data)
        if self.relay is not None:
            self.relay.put(data if isinstance(data, bytes) else bytes(data))


class MultipartIntake(Intake):
    """A multipart/form-data body: the ``file`` part's bytes go on, the rest is counted.

    With a Content-Length (``declared``) and ``stream`` set, the file's size is predicted
    as soon as its data starts: the body's length minus what came before the data, minus
    the closing boundary that curl, libcurl and browsers send right after the file. A
    relay of that size is then made; if the file part turns out to be another size
    (fields after the file, an epilogue), the relay fails with ``PredictionMissed`` and
    the file is stored from the copy instead.
    """

    def __init__(
        self,
        limit: int,
        copy: SpoolFile | None,
        boundary: bytes,
        declared: int | None,
        stream: bool,
    ) -> None:
        super().__init__(limit, copy, None)
        try:
            self._parser = MultipartParser(boundary, callbacks=self._callbacks())
        except ValueError:  # e.g. a boundary longer than the standard allows
            raise ApiError(400, "bad_multipart", "the multipart boundary is invalid") from None
        self._closing = len(b"\r\n--" + boundary + b"--\r\n")
        self._declared = declared if stream else None
        self._block = b""
        self._before = 0  # body bytes before the current block
        self._pieces: list[bytes | memoryview] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._in_file = False
        self._file_parts = 0
        self._file_started = False
        self._ended = False
        self._other_file: str | None = None  # the field name of a file part not named FILE_FIELD

    def take(self, block: bytes) -> None:
        self._block = block
        try:
            self._parser.write(block)
        except MultipartParseError:
            raise ApiError(400, "bad_multipart", "the multipart body is malformed") from None
        finally:
            self._before += len(block)
            self._block = b""
        if self._file_parts > 1:
            raise ApiError(400, "too_many_files", "send exactly one file per request")
        pieces, self._pieces = self._pieces, []
        if len(pieces) == 1:
            self._file_data(pieces[0])
        elif pieces:
            self._file_data(b"".join(pieces))
        # Everything that is not the file: framing, part headers, other fields, empty
        # parts, an epilogue. Counted on every byte, whatever shape it has.
        if self._before - self.size > MULTIPART_OVERHEAD:
            if self._file_parts == 0 and self._other_file is not None:
                # A file sent under another field name (-F upload=@x): say what is wrong.
                raise ApiError(
                    422,
                    "missing_file",
                    f"the form has no field {FILE_FIELD!r}; send the file as "
                    f"{FILE_FIELD!r}, not {self._other_file[:40]!r}",
                )
            raise ApiError(413, "too_large", "the form fields beside the file are too large")

    def end(self) -> None:
        if not self._ended:
            raise ApiError(400, "bad_multipart", "the multipart body is incomplete")
        if self._file_parts == 0:
            raise ApiError(422, "missing_file", f"the form has no field {FILE_FIELD!r}")
        super().end()

    # -- parser callbacks ---------------------------------------------------------------

    def _callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._headers.clear()
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_field.decode("latin-1").lower()
        self._headers[name] = self._header_value.decode("utf-8", "replace")
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition = Message()
        disposition["content-disposition"] = self._headers.get("content-disposition", "")
        name = disposition.get_param("name", header="content-disposition")
        if name == FILE_FIELD:
            self._in_file = True
            self._file_parts += 1
            if self._file_parts == 1:
                self.filename = disposition.get_filename()
        elif disposition.get_filename() is not None and self._other_file is None:
            self._other_file = str(name or "")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not (self._in_file and self._file_parts == 1):
            return
        if not self._file_started:
            self._file_started = True
            self._predict(data, start)
        if data is self._block:
            self._pieces.append(memoryview(data)[start:end])
        else:  # the parser's own look-behind buffer, which it reuses
            self._pieces.append(bytes(data[start:end]))

    def _on_part_end(self) -> None:
        if self._in_file and self.relay is not None:
            # Bytes still in this block are not yet counted in ``size``.
            pending = sum(len(piece) for piece in self._pieces)
            if self.size + pending != self.relay.size:
                self.relay.fail(PredictionMissed())
        self._in_file = False

    def _on_end(self) -> None:
        self._ended = True

    def _predict(self, data: bytes, start: int) -> None:
        """Make the relay once the file's first byte is found in the body."""
        if self._declared is None or data is not self._block:
            return  # no length, or the offset is not known: spool, then store
        predicted = self._declared - (self._before + start) - self._closing
        if 0 < predicted <= self.limit:
            self.relay = BodyRelay(predicted, self.copy.path if self.copy else None)
