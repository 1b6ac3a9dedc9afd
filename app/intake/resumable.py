"""Resumable uploads (what the tus routes do, without HTTP): open one, add pieces in any
process of any instance, finish it like any upload, end it, or let it expire.

An upload is one small record in the upload states (``resumable_state``): its size and
offset, the caller it belongs to, what it holds of the caller's allowances (reserved once,
at creation, and settled once: when it is finished, ended or expired), the backend's own
``OpenUpload`` state, the SHA-256 of the bytes stored so far (``running_sha256``), its
expiry, and after it is finished, the answer. Writing happens only under the upload's
hold, one request at a time; every piece that storage acknowledged is recorded before
the next one is read, so a request that dies (client gone, process killed) loses at most
what storage had not acknowledged, and the client sends that again from the offset it is
told.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from app import metrics
from app.access.admission import Caller
from app.access.limits import Allowances, Reservation
from app.intake.errors import (
    ChecksumMismatch,
    NoSuchUpload,
    OffsetMismatch,
    PastUploadLength,
    PieceTooSmall,
    UploadBusy,
    UploadExpired,
    UploadIncomplete,
)
from app.intake.resumable_state import (
    BUSY_WAIT_S,
    Hold,
    UploadStates,
    known_id,
    new_upload_id,
)
from app.intake.running_sha256 import RunningSha256
from app.records.service import Receipt
from app.storage.base import (
    MakeFile,
    OpenUpload,
    PieceSource,
    Resumable,
    StoredFile,
    StoreExtras,
)

log = logging.getLogger(__name__)

# Checksums a piece may carry (tus "checksum" extension; sha1 is the protocol's minimum).
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
DRAIN_BYTES = 1024 * 1024
SWEEP_BATCH = 100


@dataclass
class Finished:
    """The stored file of a finished upload: what its answer is made from. ``name`` is the
    stored file's (another upload's, when the same bytes were stored before);
    ``delete_path`` and ``expires`` are the upload's own, when storage keeps records."""

    handle: str
    link: str
    size: int
    sha256: str
    name: str | None = None
    delete_path: str | None = None
    expires: float | None = None


class RecordingCommit(Protocol):
    """The ``Commit`` of a storage that keeps records, remembering what the upload became."""

    def __call__(self, make: MakeFile) -> StoredFile: ...

    def receipt(self) -> tuple[str, Receipt] | None:
        """The stored file's name and the upload's receipt, once committed."""
        ...


# Makes the commit for an upload about to be finished (its record, its SHA-256).
CommitFor = Callable[["UploadRecord", str], RecordingCommit]


@dataclass(frozen=True, slots=True)
class Recording:
    """How a storage that keeps records takes part in resumable uploads."""

    # The commit a finished upload takes (its record, dedup, expiry).
    commit_for: CommitFor
    # Takes a finished upload back by its receipt's delete path, as its delete URL does.
    take_back: Callable[[str], object]


@dataclass
class UploadRecord:
    """Everything remembered about one upload (stored as JSON, a few hundred bytes)."""

    id: str
    size: int
    offset: int
    expires_at: float
    token: str
    ticket: str | None
    filename: str
    service: str
    metadata: str  # Upload-Metadata as the client sent it, returned on HEAD
    reservation: Reservation
    backend: dict[str, Any]
    sha256_state: str
    finished: Finished | None = None
    created: float = field(default_factory=time.time)
    # The file's own date (Unix seconds) and, when storage keeps records, how long the
    # stored file is kept (seconds; None: until deleted), both as asked at creation.
    mtime: int | None = None
    expires_in: int | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> UploadRecord:
        values = json.loads(data)
        values["reservation"] = Reservation(**values["reservation"])
        if values.get("finished") is not None:
            values["finished"] = Finished(**values["finished"])
        return cls(**values)

    @property
    def open_upload(self) -> OpenUpload:
        return OpenUpload(self.size, self.offset, self.backend)

    def belongs_to(self, caller: Caller) -> bool:
        ticket = caller.ticket.id if caller.ticket is not None else None
        return self.token == caller.name and self.ticket == ticket

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


class ResumableUploads:
    """The resumable uploads of one service, on one backend's ``Resumable`` capability."""

    def __init__(
        self,
        resumable: Resumable,
        backend_name: str,
        states: UploadStates,
        allowances: Allowances,
        expiry_s: float,
        recording: Recording | None = None,
    ) -> None:
        """``recording``: how the storage's records take part; None when it keeps none."""
        self.resumable = resumable
        self.backend_name = backend_name
        self.states = states
        self.allowances = allowances
        self.recording = recording
        # Well inside how long the backend keeps an open upload (MEGA: about 48 h).
        self.expiry_s = min(expiry_s, resumable.longest_open_s)

    # -- opening -----------------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        held: Reservation,
        size: int,
        filename: str,
        metadata: str,
        mtime: int | None = None,
        expires_in: int | None = None,
    ) -> UploadRecord:
        """Open an upload of ``size`` bytes for ``caller``, holding ``held`` of its
        allowances until it ends (given back here if opening fails)."""
        try:
            upload = self.resumable.begin(size)
            record = UploadRecord(
                id=new_upload_id(),
                size=size,
                offset=0,
                expires_at=time.time() + self.expiry_s,
                token=caller.name,
                ticket=caller.ticket.id if caller.ticket is not None else None,
                filename=filename,
                service=self.backend_name,
                metadata=metadata,
                reservation=held,
                backend=upload.state,
                sha256_state=_b64(RunningSha256().state()),
                mtime=mtime,
                expires_in=expires_in,
            )
            self.states.save(record.id, record.encode(), record.expires_at)
        except BaseException:
            self.allowances.settle(held, stored=False, size=0)
            raise
        log.info("resumable upload %s opened: %d bytes", record.id, size)
        return record

    # -- reading -----------------------------------------------------------------------

    def look(self, upload_id: str, caller: Caller) -> UploadRecord:
        """The upload as it stands (no hold: it may be being written to). An expired one
        is ended when no request holds it, and ``UploadExpired`` raised either way."""
        record = self._load(upload_id, caller)
        if record.expired(time.time()):
            # ``open`` ends it (and raises UploadExpired); when a request holds it, that
            # request ends it.
            with contextlib.suppress(UploadBusy):
                self.open(upload_id, caller).release()
            raise UploadExpired()
        return record

    def answer(self, upload_id: str, caller: Caller) -> UploadRecord:
        """A finished upload (finishing a complete one whose finish failed before)."""
        record = self.look(upload_id, caller)
        if record.finished is None and record.offset == record.size:
            with self.held(upload_id, caller) as session:
                session.finish()
                record = session.record
        if record.finished is None:
            raise UploadIncomplete(f"the upload has {record.offset} of {record.size} bytes")
        return record

    # -- writing -----------------------------------------------------------------------

    def open(self, upload_id: str, caller: Caller) -> UploadSession:
        """The upload under its hold, for one request (``release`` it); ``UploadBusy``
        when another request still has it after a moment (``BUSY_WAIT_S``).

        An expired upload is ended here (its storage abandoned, its reservation given
        back, its record removed) and ``UploadExpired`` raised.
        """
        if not known_id(upload_id):
            raise NoSuchUpload()
        hold = self.states.hold(upload_id, BUSY_WAIT_S)
        try:
            record = self._load(upload_id, caller)
            if record.expired(time.time()):
                self._end(record)
                raise UploadExpired()
        except BaseException:
            hold.release()
            raise
        return UploadSession(self, record, hold)

    @contextmanager
    def held(self, upload_id: str, caller: Caller) -> Iterator[UploadSession]:
        """``open`` for a block."""
        session = self.open(upload_id, caller)
        try:
            yield session
        finally:
            session.release()

    def terminate(self, upload_id: str, caller: Caller) -> None:
        """End an upload at the client's request (tus termination frees what an upload
        used, finished or not): what it stored is dropped and its reservation given back;
        a finished upload is taken back as its delete URL would (a file that other
        uploads share stays theirs). The state goes last: a failure leaves it to retry."""
        with self.held(upload_id, caller) as session:
            finished = session.record.finished
            if finished is not None and finished.delete_path and self.recording is not None:
                self.recording.take_back(finished.delete_path)
            self._end(session.record)
        log.info("resumable upload %s ended by its client", upload_id)

    def sweep(self, now: float) -> int:
        """End the uploads whose expiry has passed; how many were ended."""
        ended = 0
        for upload_id in self.states.due(now, SWEEP_BATCH):
            try:
                hold = self.states.hold(upload_id)
            except (UploadBusy, NoSuchUpload):
                continue  # a request holds it (and ends it itself), or it is gone
            try:
                data = self.states.load(upload_id)
                record = UploadRecord.decode(data) if data is not None else None
                if record is None:
                    self.states.remove(upload_id)
                elif record.expired(now):
                    self._end(record)
                    ended += 1
            finally:
                hold.release()
        return ended

    # -- internals ---------------------------------------------------------------------

    def _load(self, upload_id: str, caller: Caller) -> UploadRecord:
        data = self.states.load(upload_id) if known_id(upload_id) else None
        if data is None:
            raise NoSuchUpload()
        record = UploadRecord.decode(data)
        if not record.belongs_to(caller):
            raise NoSuchUpload()  # someone else's upload is not named to them
        return record

    def _end(self, record: UploadRecord) -> None:
        """Forget an upload. An unfinished one is abandoned and what it holds is given
        back; a finished one stays counted like any stored upload, however its file goes
        later (a delete URL gives nothing back either)."""
        if record.finished is None:
            self.resumable.abandon(record.open_upload)
            self.allowances.settle(record.reservation, stored=False, size=0)
            log.info(
                "resumable upload %s ended at %d of %d bytes", record.id, record.offset, record.size
            )
        self.states.remove(record.id)


class UploadSession:
    """One request's turn at an upload, under its hold."""

    def __init__(self, uploads: ResumableUploads, record: UploadRecord, hold: Hold) -> None:
        self.uploads = uploads
        self.record = record
        self.hold = hold

    def release(self) -> None:
        """Let other requests have the upload."""
        self.hold.release()

    def check_piece(self, offset: int, length: int) -> None:
        """A piece of ``length`` bytes at ``offset`` may be added (tus core's checks)."""
        record = self.record
        if offset != record.offset:
            raise OffsetMismatch(record.offset, offset)
        if offset + length > record.size:
            raise PastUploadLength(
                f"the piece ends at {offset + length}, past the upload's length of {record.size}"
            )
        least = self.uploads.resumable.least_piece(record.open_upload)
        if 0 < length < least and offset + length < record.size:
            raise PieceTooSmall(
                f"a piece at offset {offset} must carry at least {least} bytes, or the rest "
                "of the file: storage keeps only whole chunks"
            )

    def append(self, source: PieceSource, length: int) -> None:
        """Add the next piece (``length`` bytes of ``source``); what storage acknowledged
        is recorded as it is acknowledged, and the rest of the piece read and dropped.
        A complete upload is finished."""
        record = self.record
        if length and record.finished is None:
            piece = _HashedPiece(source, record.offset, base64.b64decode(record.sha256_state))
            upload = self.uploads.resumable.append(
                record.open_upload, piece, length, self._progress(piece)
            )
            if upload.offset != record.offset:
                self._progress(piece)(upload)
            _drain(source)
        if record.offset == record.size:
            self.finish()

    def finish(self) -> None:
        """Make the stored file of a complete upload, remember the answer, settle."""
        record = self.record
        if record.finished is not None:
            return
        started = time.monotonic()
        digest = RunningSha256(base64.b64decode(record.sha256_state)).hexdigest()
        recording = self.uploads.recording
        commit = recording.commit_for(record, digest) if recording is not None else None
        stored = self.uploads.resumable.finish(
            record.open_upload, record.filename, StoreExtras(record.mtime, commit)
        )
        finished = Finished(stored.handle, stored.link, record.size, digest)
        committed = commit.receipt() if commit is not None else None
        if committed is not None:
            finished.name = committed[0]
            finished.delete_path, finished.expires = committed[1].delete_path, committed[1].expires
        record.finished = finished
        self.hold.check()
        record.reservation = self.uploads.allowances.settle(
            record.reservation, stored=True, size=record.size
        )
        self._save()
        metrics.upload_finished(
            self.uploads.backend_name,
            "tus",
            "success",
            record.size,
            time.monotonic() - started,
            False,
        )
        log.info(
            "resumable upload %s finished: %s, %d bytes, as %s",
            record.id,
            json.dumps(record.filename),
            record.size,
            stored.handle,
        )

    def _progress(self, piece: _HashedPiece) -> Any:
        def recorded(upload: OpenUpload) -> None:
            self.hold.check()  # taken over: write nothing more
            self.record.sha256_state = _b64(piece.state_at(upload.offset))
            self.record.offset = upload.offset
            self.record.backend = upload.state
            self._save()

        return recorded

    def _save(self) -> None:
        record = self.record
        self.uploads.states.save(record.id, record.encode(), record.expires_at)


class _HashedPiece:
    """A piece as the backend reads it, hashed on the way, with the hash's state at each
    point a read ended: storage may acknowledge less than it read, and the running
    SHA-256 must cover exactly what it holds."""

    def __init__(self, source: PieceSource, offset: int, state: bytes) -> None:
        self._source = source
        self._digest = RunningSha256(state)
        self._position = offset
        self._marks: deque[tuple[int, bytes]] = deque([(offset, state)])

    def read(self, size: int) -> bytes:
        data = self._source.read(size)
        if data:
            self._digest.update(data)
            self._position += len(data)
            self._marks.append((self._position, self._digest.state()))
        return data

    def state_at(self, offset: int) -> bytes:
        """The hash state after the file's first ``offset`` bytes (0: storage started over)."""
        if offset == 0:
            return RunningSha256().state()
        while self._marks and self._marks[0][0] < offset:
            self._marks.popleft()
        if not self._marks or self._marks[0][0] != offset:
            raise RuntimeError("storage acknowledged an offset where no read ended")
        return self._marks[0][1]


class MemoryPiece:
    """A piece held in memory (one that carried a checksum and was checked)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._at = 0

    def read(self, size: int) -> bytes:
        data = bytes(self._view[self._at : self._at + size])
        self._at += len(data)
        return data


def parse_checksum(header: str) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64>`` as (algorithm, digest); None when the
    algorithm is not supported. ``ValueError`` when the header is malformed."""
    algorithm, _, encoded = header.strip().partition(" ")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("Upload-Checksum is not '<algorithm> <base64 digest>'") from None
    if algorithm.lower() not in CHECKSUMS:
        return None
    return algorithm.lower(), digest


def check_piece(algorithm: str, digest: bytes, data: bytes) -> None:
    """Raise ``ChecksumMismatch`` unless ``data`` has ``digest`` (the piece is dropped)."""
    if not hmac.compare_digest(CHECKSUMS[algorithm](data).digest(), digest):
        raise ChecksumMismatch(
            f"the piece's {algorithm} does not match Upload-Checksum; it was discarded, "
            "send it again"
        )


def _drain(source: PieceSource) -> None:
    """Read what storage did not take of the piece (the request must be read whole)."""
    while source.read(DRAIN_BYTES):
        pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
