"""multipart/form-data bodies: the ``file`` part's bytes go on, everything else is counted."""

from __future__ import annotations

from collections.abc import Callable
from email.message import Message

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.intake.body import Intake, Meter
from app.intake.errors import (
    BadMultipart,
    FormTooLarge,
    MissingFile,
    NotMultipart,
    TooManyFiles,
)
from app.intake.relay import BodyRelay, PredictionMissed
from app.intake.spool import SpoolFile

FILE_FIELD = "file"
# Room for boundaries, part headers and small form fields beside the file.
MULTIPART_OVERHEAD = 64 * 1024


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type; NotMultipart or BadMultipart."""
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise NotMultipart(f"send the file as multipart/form-data in the field {FILE_FIELD!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadMultipart("the multipart Content-Type has no boundary")
    return boundary


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
        meter: Meter | None = None,
    ) -> None:
        super().__init__(limit, copy, None, meter)
        try:
            self._parser = MultipartParser(boundary, callbacks=self._callbacks())
        except ValueError:  # e.g. a boundary longer than the standard allows
            raise BadMultipart("the multipart boundary is invalid") from None
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
            raise BadMultipart("the multipart body is malformed") from None
        finally:
            self._before += len(block)
            self._block = b""
        if self._file_parts > 1:
            raise TooManyFiles("send exactly one file per request")
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
                raise MissingFile(
                    f"the form has no field {FILE_FIELD!r}; send the file as "
                    f"{FILE_FIELD!r}, not {self._other_file[:40]!r}",
                )
            raise FormTooLarge()

    def end(self) -> None:
        if not self._ended:
            raise BadMultipart("the multipart body is incomplete")
        if self._file_parts == 0:
            raise MissingFile(f"the form has no field {FILE_FIELD!r}")
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
