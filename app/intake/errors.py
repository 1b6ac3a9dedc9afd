"""What can go wrong while a body is taken in: the intake errors, the whole hierarchy.

These know nothing of HTTP; ``str(error)`` is written for the client. ``app.api.errors``
maps each class to its status and code.
"""

from __future__ import annotations


class IntakeError(Exception):
    """The body cannot become a stored file."""


class UploadTooLarge(IntakeError):
    """The file is larger than the caller may store (``limit`` bytes)."""

    def __init__(self, limit: int, what: str = "the limit") -> None:
        super().__init__(f"the file is larger than {what} of {limit} bytes")
        self.limit = limit


class FormTooLarge(IntakeError):
    """The multipart form carries too much beside the file."""

    def __init__(self) -> None:
        super().__init__("the form fields beside the file are too large")


class InvalidLength(IntakeError):
    """The declared length is not a number."""


class NotMultipart(IntakeError):
    """``POST /upload`` without a multipart/form-data body."""


class BadMultipart(IntakeError):
    """The multipart body is malformed, incomplete or has no usable boundary."""


class TooManyFiles(IntakeError):
    """More than one file part."""


class MissingFile(IntakeError):
    """No file part under the expected field name."""


class InvalidFilename(IntakeError, ValueError):
    """A file name that is empty once the unsafe parts are removed."""


class NoFreeSlot(IntakeError):
    """Every upload slot of this instance stayed busy for the whole wait."""

    def __init__(self) -> None:
        super().__init__("too many uploads in progress; try again shortly")


class SourceGone(IntakeError):
    """The client stopped sending before the announced end of the body."""

    def __init__(self, reason: str = "the client closed the connection") -> None:
        super().__init__(reason)


class ClientTooSlow(SourceGone):
    """The client sent nothing for too long, or sent too slowly on average."""

    def __init__(self, idle_s: float, reason: str | None = None) -> None:
        super().__init__(reason or f"the client sent nothing for {idle_s:g} s")


class BadDigest(IntakeError):
    """A digest header that cannot be read (RFC 9530 syntax: ``sha-256=:<base64>:``)."""


class DigestMismatch(IntakeError):
    """The bytes received do not have the SHA-256 the client declared; nothing is stored."""
