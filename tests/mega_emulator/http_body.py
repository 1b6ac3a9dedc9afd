"""Request body reading in bounded pieces (Content-Length or chunked)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

PIECE = 1024 * 1024  # read and write uploads 1 MiB at a time


class BodyReader:
    """Iterates over a request body without ever holding more than one piece.

    ``remaining`` tracks what is left so the connection can be drained (and
    kept alive) when a handler answers without consuming the body.
    """

    def __init__(self, rfile: BinaryIO, content_length: int | None, chunked: bool) -> None:
        self.rfile = rfile
        self.remaining = content_length or 0
        self.chunked = chunked
        self.length = content_length  # None for chunked bodies
        self._chunk_left = 0
        self._done = not chunked and not self.remaining
        self._buffer = memoryview(bytearray(PIECE))

    def _read_exact_into(self, want: int) -> memoryview:
        view = self._buffer[:want]
        got = 0
        while got < want:
            n = self.rfile.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                raise ConnectionError("client closed the connection mid-body")
            got += n
        return view

    def pieces(self, limit: int | None = None) -> Iterator[memoryview]:
        """Yield body pieces of at most PIECE bytes (``limit`` bytes in all).
        The yielded view is reused: consume it before asking for the next."""
        budget = limit if limit is not None else -1
        while not self._done and budget != 0:
            if self.chunked:
                if self._chunk_left == 0:
                    line = self.rfile.readline(1024)
                    if not line:
                        raise ConnectionError("client closed the connection mid-body")
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailer section ends with an empty line.
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        self._done = True
                        return
                    self._chunk_left = size
                want = min(self._chunk_left, PIECE)
            else:
                want = min(self.remaining, PIECE)
            if budget > 0:
                want = min(want, budget)
                budget -= want
            view = self._read_exact_into(want)
            if self.chunked:
                self._chunk_left -= want
                if self._chunk_left == 0:
                    self.rfile.readline(16)  # CRLF after the chunk data
            else:
                self.remaining -= want
                self._done = self.remaining == 0
            yield view

    def read_all(self, max_bytes: int) -> bytes:
        data = bytearray()
        for piece in self.pieces():
            data += piece
            if len(data) > max_bytes:
                raise ValueError("request body too large")
        return bytes(data)

    def drain(self) -> None:
        for _ in self.pieces():
            pass

    @property
    def done(self) -> bool:
        return self._done
