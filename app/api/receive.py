"""Request bodies streamed into the spool: multipart form data or a raw body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.api.errors import ApiError
from app.relay import ClientTooSlow
from app.spool import SpoolSink

FILE_FIELD = "file"
# Room for boundaries, part headers and small form fields beside the file.
MULTIPART_OVERHEAD = 64 * 1024


def check_declared_length(request: Request, limit: int, overhead: int = 0) -> None:
    """Refuse a body whose Content-Length is already over the limit, before reading it.

    ``overhead`` is what the body may carry beside the file itself (multipart framing).
    """
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise ApiError(400, "bad_request", "the Content-Length header is not a number")
    if int(declared) > limit + overhead:
        raise ApiError(
            413,
            "too_large",
            f"the file is larger than the limit of {limit} bytes",
            {"Connection": "close"},
        )


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; ClientTooSlow when it stalls.

    Without this, a client that stops sending (or a connection that silently died) would
    hold its upload slot and everything kept for it for as long as the socket lives.
    """
    idle_s = request.app.state.services.settings.client_idle_timeout_seconds
    chunks = request.stream().__aiter__()
    while True:
        with anyio.move_on_after(idle_s) as waiting:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
        if waiting.cancelled_caught:
            raise ClientTooSlow(idle_s)
        yield chunk


async def receive_raw(request: Request, sink: SpoolSink) -> None:
    async for chunk in body_chunks(request):
        await sink.write(chunk)


@dataclass
class _Parts:
    """What the parser's callbacks saw; drained after each ``write``."""

    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    in_file: bool = False
    filename: str | None = None
    file_parts: int = 0
    other_bytes: int = 0
    data: list[bytes] = field(default_factory=list)
    ended: bool = False

    def on_part_begin(self) -> None:
        self.headers.clear()
        self.in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self.header_field.decode("latin-1").lower()
        self.headers[name] = self.header_value.decode("utf-8", "replace")
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = Message()
        disposition["content-disposition"] = self.headers.get("content-disposition", "")
        if disposition.get_param("name", header="content-disposition") == FILE_FIELD:
            self.in_file = True
            self.file_parts += 1
            if self.file_parts == 1:
                self.filename = disposition.get_filename()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file and self.file_parts == 1:
            self.data.append(bytes(data[start:end]))
        else:
            self.other_bytes += end - start

    def on_end(self) -> None:
        self.ended = True


async def receive_multipart(request: Request, sink: SpoolSink) -> str:
    """Stream the ``file`` field into ``sink``; return the file name the client gave."""
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
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, callbacks=_callbacks(parts))
    except ValueError:  # e.g. a boundary longer than the standard allows
        raise ApiError(400, "bad_multipart", "the multipart boundary is invalid") from None
    async for chunk in body_chunks(request):
        try:
            parser.write(chunk)
        except MultipartParseError:
            raise ApiError(400, "bad_multipart", "the multipart body is malformed") from None
        for piece in parts.data:
            await sink.write(piece)
        parts.data.clear()
        if parts.file_parts > 1:
            raise ApiError(400, "too_many_files", "send exactly one file per request")
        if parts.other_bytes > MULTIPART_OVERHEAD:
            raise ApiError(413, "too_large", "the form fields beside the file are too large")
    if not parts.ended:
        raise ApiError(400, "bad_multipart", "the multipart body is incomplete")
    if parts.file_parts == 0:
        raise ApiError(422, "missing_file", f"the form has no field {FILE_FIELD!r}")
    return parts.filename or ""


def _callbacks(parts: _Parts) -> dict:
    return {
        "on_part_begin": parts.on_part_begin,
        "on_header_field": parts.on_header_field,
        "on_header_value": parts.on_header_value,
        "on_header_end": parts.on_header_end,
        "on_headers_finished": parts.on_headers_finished,
        "on_part_data": parts.on_part_data,
        "on_end": parts.on_end,
    }
