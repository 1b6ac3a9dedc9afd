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


# -- resumable (tus) uploads ------------------------------------------------------------


class NoSuchUpload(IntakeError):
    """No open upload has this id (for this caller)."""

    def __init__(self, reason: str = "no such upload") -> None:
        super().__init__(reason)


class UploadExpired(IntakeError):
    """The upload was not finished in time; it and what it stored are gone."""

    def __init__(self) -> None:
        super().__init__("the upload expired before it was finished; start a new one")


class UploadBusy(IntakeError):
    """Another request is writing to the upload right now."""

    def __init__(self, reason: str = "another request is writing to this upload") -> None:
        super().__init__(reason)


class HoldLost(UploadBusy):
    """The upload was taken over while this request wrote to it: it stops, writing nothing."""

    def __init__(self) -> None:
        super().__init__("another request took this upload over")


class OffsetMismatch(IntakeError):
    """A piece that does not start where the upload stands."""

    def __init__(self, expected: int, offered: int) -> None:
        super().__init__(f"the upload is at offset {expected}, not {offered}")
        self.expected = expected


class PastUploadLength(IntakeError):
    """A piece that would make the file longer than its announced length."""


class PieceTooSmall(IntakeError):
    """A piece too short for storage to keep any of it (less than the next MEGA chunk):
    sending it again and again would never move the upload on."""


class ChecksumMismatch(IntakeError):
    """A piece whose bytes do not match its Upload-Checksum; it was discarded."""


class UploadIncomplete(IntakeError):
    """The answer of an upload that is not complete yet was asked for."""


class UploadStateUnavailable(IntakeError):
    """The shared store of open uploads (Redis) cannot be reached right now."""

    def __init__(self) -> None:
        super().__init__("open uploads cannot be reached right now (shared state); try again")
