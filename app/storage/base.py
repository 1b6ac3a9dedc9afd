"""The storage backend interface, the stored-file result and the storage error types.

Backends are synchronous: the API layer runs every call in a worker thread, so a
backend may block on disk or network I/O but never sees an HTTP request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Where an upload ended up.

    ``link`` is either an absolute URL or a path starting with ``/`` that the API
    layer resolves against the service's public base URL. ``key`` is what the backend
    needs to reach the file again besides its handle (``FileRecord.key``; MEGA: the node
    key), empty when the handle is enough.
    """

    handle: str
    link: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoreExtras:
    """What goes with a file into storage beyond its bytes and name: ``mtime``, its own
    date when the client gave one (Unix seconds; the upload's time otherwise), and
    ``commit``, given only to a backend that keeps records (``RecordKeeping``)."""

    mtime: int | None = None
    commit: Commit | None = None


NO_EXTRAS = StoreExtras()


class StorageBackend(Protocol):
    """What the HTTP layer needs from every place that stores files."""

    name: str

    def capabilities(self) -> Capabilities:
        """What this backend can do beyond the core: declared in one place per backend."""
        ...

    def location(self) -> str:
        """Where files go, in words for the operator's start-up line."""
        ...

    def start(self) -> None:
        """Prepare local resources; must not fail because a remote service is down."""

    def store(
        self, source: Path, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        """Store the local file ``source`` under ``filename``; ``source`` stays the caller's."""
        ...

    def readiness(self) -> Readiness:
        """Whether an upload started now could succeed, and if not, why."""
        ...

    def delete(self, handle: str) -> None:
        """Remove a stored file; a missing one is not an error."""

    def close(self) -> None:
        """Release connections and files; called once at shutdown."""


class Connecting(Protocol):
    """Must connect (log in) before it can store; done once at start-up, in a worker
    thread, while the service already answers /health."""

    def connect(self) -> None:
        """Connect, or raise: ``StorageLoginFailed`` when the credentials are refused (the
        deploy can never work), another ``StorageError`` when it is worth trying later."""


class BodyStream(Protocol):
    """A request body being received: blocking reads, in a worker thread."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at least one); b"" only at the end; raises if the client left."""
        ...

    def rewind(self) -> bool:
        """Deliver the body again from byte 0 (from a private copy); False when impossible."""
        ...


class Streaming(Protocol):
    """Stores a body while it is still arriving, with no temporary file."""

    def store_stream(
        self, body: BodyStream, filename: str, size: int, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        """Store exactly ``size`` bytes from ``body``.

        Exceptions raised by ``body.read`` (the client left) must propagate unchanged,
        after anything partly stored has been removed.
        """
        ...


class Downloads(Protocol):
    """Serves its files back itself (its links point at this service)."""

    def locate(self, handle: str, filename: str) -> Path | None:
        """The stored file behind a download link, or None when there is none."""
        ...


# The service's record of a file is a set of short string fields kept with the file
# itself; their names start with this prefix (on MEGA: custom node attributes, which the
# SDK writes as "_" plus at most 7 bytes).
RECORD_PREFIX = "_p"


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What identifies a stored file and what anyone may know of it.

    ``key`` is what the backend needs to reach the file again (MEGA: the node key), opaque
    to everyone else; ``link`` is None while the file has no public link; ``created`` is
    in Unix seconds.
    """

    id: str
    name: str
    size: int
    created: int
    link: str | None
    key: str


@dataclass(frozen=True, slots=True)
class FileRecord(FileFacts):
    """One stored file as its backend reports it, with the service's record fields."""

    fields: Mapping[str, str]


# Makes the file from the bytes a backend already holds, with the given record fields.
MakeFile = Callable[[Mapping[str, str]], StoredFile]


class Commit(Protocol):
    """Decides, once every byte is in the backend's hands and before any file exists,
    whether one is made: it calls ``make`` (once) with the record fields, or returns
    another ``StoredFile`` without calling it (the same bytes are stored already: the
    backend then drops what it holds), or raises (nothing is made)."""

    def __call__(self, make: MakeFile) -> StoredFile: ...


class RecordKeeping(Protocol):
    """Keeps the service's record on each stored file and lists every file of the service.

    A backend that declares it takes a ``Commit`` (``StoreExtras.commit``) on ``store``,
    ``store_stream`` and a resumable upload's ``finish``. Blocking: run it in a worker thread.
    """

    @property
    def lock_dir(self) -> Path:
        """A directory beside the files where processes of one machine keep lock files."""
        ...

    def list_records(self) -> list[FileRecord]:
        """Every file of the service, in one listing of the storage."""
        ...

    def read_record(self, file: FileRecord) -> FileRecord | None:
        """``file`` as storage holds it now (fresh fields, name and size); None when gone."""
        ...

    def write_record(self, file: FileRecord, fields: Mapping[str, str]) -> bool:
        """Replace the file's record fields with ``fields``, keeping everything else the
        storage holds about it; False when the file is gone."""
        ...


class LinkControl(Protocol):
    """Takes a file's public link away, and gives it one again."""

    def revoke_link(self, file: FileRecord) -> None:
        """The link stops working at once; the file stays."""

    def make_link(self, file: FileRecord) -> str:
        """The file's public link, made when it has none."""
        ...


@dataclass(frozen=True, slots=True)
class Space:
    """Bytes used and bytes available in all of the storage."""

    used: int
    total: int

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


class SpaceReport(Protocol):
    """Knows how full the storage is (one request: run it in a worker thread)."""

    def space(self) -> Space: ...


class PieceSource(Protocol):
    """One piece of a resumable upload while it arrives: blocking reads, in a worker thread."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at least one); b"" only at the end of the piece; raises
        if the client left."""
        ...


@dataclass(frozen=True, slots=True)
class OpenUpload:
    """A resumable upload the backend holds open: ``offset`` bytes from the start of the
    file are stored, and ``state`` (small, JSON-serialisable, the backend's own) is all it
    needs to go on, in any process of any instance."""

    size: int
    offset: int
    state: dict[str, Any]


# Told of an open upload each time its backend holds more of it.
Progress = Callable[[OpenUpload], None]


class Resumable(Protocol):
    """Keeps an upload open across requests, processes and instances (tus), with no copy
    of the file's bytes outside the backend's own storage.

    ``longest_open_s`` is how long an open upload may wait for its next piece; the tus
    layer expires uploads well inside it.
    """

    longest_open_s: float

    def begin(self, size: int) -> OpenUpload:
        """Open an upload of ``size`` bytes."""
        ...

    def least_piece(self, upload: OpenUpload) -> int:
        """The fewest bytes a piece at ``upload.offset`` must bring for any of it to be
        stored (MEGA: the whole next chunk); the rest of the file is always enough."""
        ...

    def append(
        self, upload: OpenUpload, source: PieceSource, length: int, progress: Progress
    ) -> OpenUpload:
        """Store the next ``length`` bytes of the file, read from ``source``, at
        ``upload.offset``; the upload as it is afterwards.

        The backend may accept fewer bytes than it reads (only whole pieces of its own,
        e.g. MEGA's chunks): the returned ``offset`` is what it holds, and the caller
        reads and drops the rest. ``progress`` is called (in this thread) whenever more
        is held, so that what was stored survives a failure; an offset that goes back
        (to 0) means the backend had to start the upload again. What ``source.read``
        raises is re-raised unchanged, after ``progress`` has been told what was held.
        """
        ...

    def finish(
        self, upload: OpenUpload, filename: str, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        """Make the stored file of a complete upload (``offset == size``)."""
        ...

    def abandon(self, upload: OpenUpload) -> None:
        """Drop an open upload and whatever it stored; never raises for a missing one."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The optional capabilities of a backend, the way tusd's ``StoreComposer`` composes a
    store: each field holds the object that provides it (usually the backend itself) or
    None. The app enables routes and features from this declaration alone, never from
    the backend's class or attributes.

    ``restarts_streams``: the backend may ask a stream to ``rewind`` (MEGA starting an
    upload again on a fresh URL), so streamed bodies keep a private copy, and multipart
    bodies are streamed to it too (it would otherwise upload the file a second time after
    the body).
    """

    connect: Connecting | None = None
    stream: Streaming | None = None
    restarts_streams: bool = False
    download: Downloads | None = None
    # Upload records (README, "Records"): a record kept with each file, which is what
    # listing, deleting by the uploader, expiry and dedup rest on; public links that
    # can be taken away and given again; how full the storage is (quota before bytes).
    records: RecordKeeping | None = None
    links: LinkControl | None = None
    space: SpaceReport | None = None
    # Uploads kept open across requests (the tus routes follow this declaration).
    resumable: Resumable | None = None


class StartupError(Exception):
    """A local resource that a setting names cannot be used.

    ``str(error)`` is one line for the operator that starts with the setting's name.
    """


class StorageError(Exception):
    """A failure to store a file. ``str(error)`` is safe to show to a client."""

    # True when the failure is a known state of the destination that the backend logged
    # once when it began: each refused request is then not logged again.
    reported = False


class StorageFull(StorageError):
    """The destination has no room for the file."""


class StorageTimeout(StorageError):
    """The destination did not answer within the deadline."""


class StorageUnavailable(StorageError):
    """The backend cannot take uploads right now (not configured, not reachable)."""


class StorageBlocked(StorageUnavailable):
    """The destination refuses every upload until its owner acts (a blocked account)."""

    reported = True


class UpstreamRejected(StorageError):
    """The destination refused the upload or kept failing after retries."""


class StorageLoginFailed(UpstreamRejected):
    """The destination refused the service's credentials."""


class NoSuchFile(StorageError):
    """No stored file answers to this id (or to this id and delete secret)."""


class IndexNotReady(StorageUnavailable):
    """The index of stored files is still being built (or is out of reach)."""
