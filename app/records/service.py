"""The records of uploads: what happens when an upload is committed, deleted, listed,
relinked or expires. Storage is the record (MEGA nodes carry it); the index only finds
things fast.

Every change to a file's record is a read-modify-write of the record as the storage holds
it *now* (never of the index's copy), under that file's lock: two processes adding
references, a sweeper and an uploader deleting, cannot undo each other, and a sweeper
that dies mid-way has deleted only files whose fresh record said they had expired.
Uploads of the same bytes are committed one at a time (a lock per SHA-256), so the
second finds the first's file instead of making a second one.

Blocking throughout (storage, Redis): call it from worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from app import metrics
from app.access.errors import MayNotManage
from app.intake.errors import DigestMismatch
from app.records.index import RecordIndex, Row
from app.records.locks import Held, Locks
from app.records.model import MAX_REFERENCES, Record, Reference, new_secret
from app.records.space import SpaceTracker
from app.shared_state import LockTimeout, SharedStateUnavailable
from app.storage.base import (
    IndexNotReady,
    LinkControl,
    MakeFile,
    NoSuchFile,
    RecordKeeping,
    StorageBackend,
    StorageError,
    StoredFile,
)

log = logging.getLogger(__name__)

# How long an upload waits for the index to be built before it is committed without
# looking for the same bytes; how long it waits for another upload of the same bytes.
INDEX_WAIT_S = 10.0
DIGEST_WAIT_S = 120.0
DIGEST_HOLD_S = 300.0
# A file's lock: one read and one write of its record at most.
FILE_WAIT_S = 30.0
FILE_HOLD_S = 120.0
# The sweep's and the build's locks are renewed as they go; a holder that died frees
# them after this long (lock files: at once).
SWEEP_HOLD_S = 60.0
BUILD_HOLD_S = 900.0
SWEEP_BATCH = 200
# An empty file costs nothing to store and its name is all it has: never joined to another.
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An upload whose bytes storage holds, about to be committed."""

    name: str
    token: str
    expires_in: int | None
    declared_sha256: str | None  # what the client said the bytes are (hex)
    sha256: str  # what they are
    size: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an uploader keeps of its upload: the path that deletes it (its secret shown
    only in the upload's answer) and when it expires (Unix seconds; None: kept)."""

    delete_path: str
    expires: float | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an upload became: the file its answer points at, its own reference (with the
    delete secret, which only its answer ever shows), and whether the file was stored
    already (the upload joined it)."""

    record: Record
    reference: Reference
    secret: str
    joined: bool

    def receipt(self) -> Receipt:
        record = self.record
        return Receipt(f"/delete/{record.id}/{record.key}/{self.secret}", self.reference.expires)


@dataclass(slots=True)
class Swept:
    deleted: int = 0
    trimmed: int = 0
    failed: int = 0


class UploadCommit:
    """The ``Commit`` a record-keeping backend calls for one upload; it remembers what
    the upload became. ``pending`` describes the upload when its bytes are all in."""

    def __init__(self, records: Records, pending: Callable[[], PendingUpload]) -> None:
        self._records = records
        self._pending = pending
        self.outcome: Outcome | None = None

    def __call__(self, make: MakeFile) -> StoredFile:
        stored, self.outcome = self._records.commit(make, self._pending())
        return stored

    def receipt(self) -> tuple[str, Receipt] | None:
        """The stored file's name and this upload's receipt, once committed."""
        if self.outcome is None:
            return None
        return self.outcome.record.name, self.outcome.receipt()

    def undo(self) -> None:
        """Take the upload back (its answer will not be sent)."""
        if self.outcome is not None:
            self._records.undo(self.outcome)
            self.outcome = None


@dataclass
class Records:
    """Records of one backend, with the index, the locks and the storage figures."""

    backend: StorageBackend
    keeping: RecordKeeping
    links: LinkControl | None
    index: RecordIndex
    locks: Locks
    space: SpaceTracker
    refresh_s: float
    clock: Callable[[], float] = time.time
    _building: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # A write the index missed (Redis out of reach): the next check rebuilds it.
    _missed: bool = field(default=False, init=False, repr=False)

    # -- the index -----------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the index has been built (and, shared, is still there)."""
        try:
            return self.index.built() is not None
        except SharedStateUnavailable:
            return False

    def refresh(self, force: bool = False) -> int | None:
        """Build the index from one listing of the storage when it is missing, older than
        ``refresh_s``, or missed a write; how many files it lists (None: not due, or
        another process is building it). Storage errors propagate."""
        if not self._due(force):
            return None
        if not self._building.acquire(blocking=False):
            return None
        try:
            if not self.index.shared:  # each process builds its own
                return self._build()
            # One build serves every process: whoever holds the lock builds, the others
            # find it fresh afterwards.
            with self.locks.attempt("index-build", BUILD_HOLD_S) as held:
                if held is None or not self._due(force):
                    return None
                return self._build()
        finally:
            self._building.release()

    def _due(self, force: bool) -> bool:
        if force or self._missed:
            return True
        built = self.index.built()
        return built is None or self.clock() - built >= self.refresh_s

    def _build(self) -> int:
        started = self.clock()
        self._missed = False
        files = self.keeping.list_records()
        count = self.index.rebuild((Record.from_file(file) for file in files), started)
        metrics.records_indexed(count)
        log.info("index of uploads built: %d files in %.2f s", count, self.clock() - started)
        return count

    def wait_until_ready(self, timeout_s: float) -> bool:
        """Whether the index is (or becomes, within ``timeout_s``) ready; False at once
        when it is out of reach (Redis down), which waiting would not change soon."""
        return self._wait(timeout_s) == "ready"

    def _wait(self, timeout_s: float) -> str:
        """ "ready", "building" (still not built after ``timeout_s``) or "unreachable"."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.index.built() is not None:
                    return "ready"
            except SharedStateUnavailable:
                return "unreachable"
            if time.monotonic() >= deadline:
                return "building"
            time.sleep(0.2)

    # -- uploads -----------------------------------------------------------------------

    def commit(self, make: MakeFile, upload: PendingUpload) -> tuple[StoredFile, Outcome]:
        """Make the upload's file with its record, or join a live file with the same bytes
        (no second file: ``make`` is not called); ``DigestMismatch`` when the bytes are not
        the ones the client declared (nothing is made)."""
        sha256, size = upload.sha256, upload.size
        if upload.declared_sha256 is not None and upload.declared_sha256 != sha256:
            raise DigestMismatch(
                f"the body's SHA-256 is {sha256}, not the declared {upload.declared_sha256}; "
                "nothing was stored"
            )
        reference, secret = self._new_reference(upload.token, upload.expires_in)
        if sha256 == EMPTY_SHA256:
            return self._make(make, upload.name, sha256, size, reference, secret)
        # Waiting for the index needs no lock: others with the same bytes need not queue.
        if self._wait(INDEX_WAIT_S) == "building":
            log.warning("the index of uploads is not built yet: stored without looking for it")
        try:
            with self.locks.hold(f"sha:{sha256}", DIGEST_WAIT_S, DIGEST_HOLD_S):
                return self._commit(make, upload, sha256, size, reference, secret)
        except LockTimeout:
            log.warning("another upload of the same bytes holds on; storing this one apart")
            return self._make(make, upload.name, sha256, size, reference, secret)

    def _commit(
        self,
        make: MakeFile,
        upload: PendingUpload,
        sha256: str,
        size: int,
        reference: Reference,
        secret: str,
    ) -> tuple[StoredFile, Outcome]:
        for joined in self._joined(sha256, size, reference):
            stored = StoredFile(joined.id, joined.link or "", joined.key)
            return stored, Outcome(joined, reference, secret, joined=True)
        return self._make(make, upload.name, sha256, size, reference, secret)

    def _make(
        self,
        make: MakeFile,
        name: str,
        sha256: str,
        size: int,
        reference: Reference,
        secret: str,
    ) -> tuple[StoredFile, Outcome]:
        record = Record("", name, size, reference.created, None, "", sha256, (reference,))
        stored = make(record.fields())
        record = replace(
            record, id=stored.handle, link=stored.link, key=stored.key or stored.handle
        )
        self._index_put(record)
        self.space.added(size)
        return stored, Outcome(record, reference, secret, joined=False)

    def join_declared(
        self, sha256: str, size: int | None, token: str, expires_in: int | None
    ) -> Outcome | None:
        """Join a live file with these bytes without receiving them (for callers who may
        list uploads, and could find its link anyway); None when there is none."""
        if not self.ready():
            return None
        reference, secret = self._new_reference(token, expires_in)
        try:
            with self.locks.hold(f"sha:{sha256}", DIGEST_WAIT_S, DIGEST_HOLD_S):
                for joined in self._joined(sha256, size, reference):
                    return Outcome(joined, reference, secret, joined=True)
        except LockTimeout:
            return None
        return None

    def _joined(self, sha256: str, size: int | None, reference: Reference) -> Iterator[Record]:
        """Files with these bytes that took ``reference`` (at most one is wanted)."""
        if sha256 == EMPTY_SHA256:
            return
        try:
            candidates = self.index.by_digest(sha256)
        except SharedStateUnavailable:
            # The shared state has said once that Redis is away; no line per upload.
            log.debug("the index of uploads is out of reach: not looking for the same bytes")
            return
        for candidate in candidates:
            # A file whose link was taken away stays without one: the same bytes sent
            # again are stored as a new file rather than given the old one's link back.
            if candidate.link is None or (size is not None and candidate.size != size):
                continue
            joined = self._add_reference(candidate, reference)
            if joined is not None:
                yield joined

    def _add_reference(self, candidate: Record, reference: Reference) -> Record | None:
        with self._file_locked(candidate.id):
            current = self._fresh(candidate)
            if current is None or current.sha256 != candidate.sha256:
                return None
            live = current.live(self.clock())
            if len(live) >= MAX_REFERENCES:
                return None
            updated = current.with_references((*live, reference))
            if not self.keeping.write_record(updated.file(), updated.fields()):
                self._index_remove(candidate.id)
                return None
            self._index_put(updated)
            return updated

    def undo(self, outcome: Outcome) -> None:
        """Take back a committed upload whose answer nobody will receive: its reference,
        and the file with it unless another upload of the same bytes joined it since."""
        self._drop(outcome.record, lambda ref: ref == outcome.reference)

    # -- deleting ------------------------------------------------------------------------

    def delete_by_secret(self, file_id: str, key: str, secret: str) -> str:
        """Remove the one upload this delete secret belongs to (and the file with its last
        live upload): "file" or "uploads"; ``NoSuchFile`` for a wrong, used or unknown one.
        Works without the index: the delete URL carries what storage needs to find it."""
        indexed = self._indexed(file_id)
        known = indexed is not None and indexed.key == key
        file = indexed if known and indexed else Record(file_id, "", 0, 0, None, key, None, ())
        dropped = self._drop(file, lambda ref: ref.matches(secret), indexed=known)
        if dropped is None:
            raise NoSuchFile("no such upload, or it was deleted already")
        return dropped

    def take_back(self, delete_path: str) -> str | None:
        """``delete_by_secret`` for a receipt's delete path (``Outcome.receipt``); None
        when that upload was taken back already."""
        _, _, file_id, key, secret = delete_path.split("/")
        try:
            return self.delete_by_secret(file_id, key, secret)
        except NoSuchFile:
            return None

    def delete(self, file_id: str, owner: str | None) -> str:
        """Remove a file (``owner`` None: the whole file and its link) or ``owner``'s
        uploads of it (the file goes with its last live upload). "file" or "uploads"."""
        record = self._known(file_id)
        if owner is None:
            with self._file_locked(file_id):
                self._delete_file(record)
            return "file"
        dropped = self._drop(record, lambda ref: ref.token == owner)
        if dropped is None:
            raise NoSuchFile("no such upload")
        return dropped

    def _drop(
        self, file: Record, which: Callable[[Reference], bool], indexed: bool = True
    ) -> str | None:
        """Remove the references ``which`` picks (and expired ones), and the file when no
        live one is left: "file" or "uploads"; None when none was picked. ``indexed``
        False: the index does not know the file (its link), so only a removal reaches it."""
        with self._file_locked(file.id):
            # Not indexed (a delete URL's key the index does not hold): a file storage
            # cannot read with that key is not gone for anybody else.
            current = self._fresh(file, forget_gone=indexed)
            if current is None or not any(which(ref) for ref in current.references):
                return None
            now = self.clock()
            kept = tuple(ref for ref in current.references if not which(ref) and ref.live(now))
            if not kept:
                self._delete_file(current)
                return "file"
            updated = current.with_references(kept)
            if not self.keeping.write_record(updated.file(), updated.fields()):
                self._index_remove(file.id)
                return None
            if indexed:
                self._index_put(updated)
            return "uploads"

    def _delete_file(self, record: Record) -> None:
        self.backend.delete(record.id)
        self._index_remove(record.id)
        self.space.removed(record.size)

    # -- listing and links ---------------------------------------------------------------

    def page(
        self, token: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Row], str | None]:
        """A page of live uploads, newest first (``token``: only that token's)."""
        if not self.ready():
            raise IndexNotReady("the list of uploads is being built; try again shortly")
        try:
            return self.index.page(token, limit, cursor, self.clock())
        except SharedStateUnavailable:
            raise IndexNotReady("the list of uploads is out of reach; try again shortly") from None

    def set_link(self, file_id: str, owner: str | None, present: bool) -> Record:
        """Give the file a public link (``present``) or take it away; the record after.
        ``owner`` set: only when every live upload of the file is that token's."""
        assert self.links is not None  # the API answers 501 without the capability
        record = self._known(file_id)
        with self._file_locked(file_id):
            current = self._fresh(record)
            if current is None:
                raise NoSuchFile("no such upload")
            if owner is not None:
                live = current.live(self.clock())
                if not any(ref.token == owner for ref in live):
                    raise NoSuchFile("no such upload")
                if any(ref.token != owner for ref in live):
                    raise MayNotManage(
                        "other uploaders rely on this file's link; only a token with "
                        "can_manage may change it"
                    )
            if present:
                updated = current.with_link(self.links.make_link(current.file()))
            else:
                self.links.revoke_link(current.file())
                updated = current.with_link(None)
            self._index_put(updated)
            return updated

    # -- expiry ----------------------------------------------------------------------------

    def sweep(self) -> Swept | None:
        """Delete expired uploads (and files with no live upload left); None when another
        sweep runs. Each file is judged on its record as storage holds it now."""
        if not self.ready():
            self.refresh(force=True)
        if not self.index.due(self.clock(), 1):
            return Swept()  # nothing has expired: no lock to take
        with self.locks.attempt("sweep", SWEEP_HOLD_S) as held:
            if held is None:
                return None
            return self._sweep(held)

    def _sweep(self, held: Held) -> Swept:
        swept = Swept()
        done: set[str] = set()
        while True:
            now = self.clock()
            due = [file_id for file_id in self.index.due(now, SWEEP_BATCH) if file_id not in done]
            if not due:
                break
            for file_id in due:
                done.add(file_id)
                self._sweep_one(file_id, now, swept)
                held.renew()
        if swept.deleted or swept.trimmed or swept.failed:
            log.info(
                "sweep: %d expired files deleted, %d trimmed, %d failed (tried again next time)",
                swept.deleted,
                swept.trimmed,
                swept.failed,
            )
        metrics.records_swept("deleted", swept.deleted)
        metrics.records_swept("trimmed", swept.trimmed)
        return swept

    def _sweep_one(self, file_id: str, now: float, swept: Swept) -> None:
        indexed = self.index.get(file_id)
        if indexed is None:
            return
        try:
            with self._file_locked(file_id, wait_s=5.0):
                current = self._fresh(indexed)
                if current is None:
                    return
                live = current.live(now)
                if live == current.references:
                    self._index_put(current)  # the index was behind: nothing expired
                elif not live:
                    self._delete_file(current)
                    swept.deleted += 1
                else:
                    updated = current.with_references(live)
                    if self.keeping.write_record(updated.file(), updated.fields()):
                        self._index_put(updated)
                        swept.trimmed += 1
        except (LockTimeout, StorageError) as error:
            log.warning("sweep: file %s left for the next sweep (%s)", file_id, error)
            swept.failed += 1

    # -- internals -------------------------------------------------------------------------

    def _new_reference(self, token: str, expires_in: int | None) -> tuple[Reference, str]:
        now = int(self.clock())
        secret, hashed = new_secret()
        expires = now + expires_in if expires_in is not None else None
        return Reference(token, now, expires, hashed), secret

    def _file_locked(
        self, file_id: str, wait_s: float = FILE_WAIT_S
    ) -> contextlib.AbstractContextManager[Held]:
        return self.locks.hold(f"file:{file_id}", wait_s, FILE_HOLD_S)

    def _fresh(self, record: Record, forget_gone: bool = True) -> Record | None:
        """The file's record as storage holds it now (the index keeps the link); None when
        the file is gone, which the index then forgets (``forget_gone``)."""
        current = self.keeping.read_record(record.file())
        if current is None:
            if forget_gone:
                self._index_remove(record.id)
            return None
        return Record.from_file(current).with_link(record.link)

    def _known(self, file_id: str) -> Record:
        record = self._indexed(file_id)
        if record is None:
            if not self.ready():
                raise IndexNotReady("the list of uploads is being built; try again shortly")
            raise NoSuchFile("no such upload")
        return record

    def _indexed(self, file_id: str) -> Record | None:
        try:
            return self.index.get(file_id)
        except SharedStateUnavailable:
            raise IndexNotReady("the list of uploads is out of reach; try again shortly") from None

    def _index_put(self, record: Record) -> None:
        try:
            self.index.put(record)
        except SharedStateUnavailable:
            self._missed = True

    def _index_remove(self, file_id: str) -> None:
        try:
            self.index.remove(file_id)
        except SharedStateUnavailable:
            self._missed = True
