"""Resumable uploads into MEGA: one upload URL kept open across requests, processes and
instances, fed piece by piece as the pieces arrive (the tus routes), with no copy of the
file anywhere but at MEGA.

What MEGA's own clients keep to resume an upload is small, and so is what is kept here
(``OpenUpload.state``, a few hundred bytes): the upload URL, the file key and nonce, the
file MAC so far and the offset. The SDK's transfer cache holds the same
(``Transfer::serialize`` in ``src/transfer.cpp``: ``tempurls``, ``transferkey``,
``ctriv``, ``chunkmacs`` with its "macsmac so far" entry), and it resumes a cached upload
from a new process by posting the missing pieces to the cached URL.

* Pieces go to the upload server only as whole MEGA chunks (``crypto.regions``): the
  SDK's pieces always start and end on chunk boundaries (``EncryptByChunks::encrypt``
  walks ``ChunkedHash::chunkceil``), so the offset an upload reports is always the end
  of a chunk MEGA acknowledged, or the file's end. What a piece brings past its last
  whole chunk is not stored: the client sends it again from the reported offset.
* The file MAC is folded chunk by chunk in file order once MEGA acknowledged the chunk
  (``crypto.fold_macs``); regions are sent several at once, as for any upload, and
  folded in order.
* When MEGA wants the upload started again (an expired URL, -3/-4/-6: the catalogue's
  RESTART_UPLOAD), "a new url means any previously uploaded data is abandoned" (the
  SDK's ``Transfer::failed``): the upload is reset to offset 0 with a fresh URL, key and
  nonce, and the client is told to send the file again from 0. Never a mixed file.
* MEGA forgets an unfinished upload URL: the SDK drops its own after
  ``TEMPURL_TIMEOUT_TS`` (172,500 s, ``include/mega/transfer.h``) without activity, and
  what MEGA's servers do is not visible to clients, so an upload is kept open for at
  most half of that (``longest_open_s``). Abandoning one needs no call: MEGA drops an
  upload that never completes, and no node exists before ``finish``.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from app.storage.base import (
    NO_EXTRAS,
    OpenUpload,
    PieceSource,
    Progress,
    StorageError,
    StoredFile,
    StoreExtras,
)

from .crypto import BLOCK, FileKey, bytes_a32, fold_macs, meta_mac, node_key, regions, seal_region
from .errors import (
    EAGAIN,
    MegaApiError,
    MegaBadAnswer,
    MegaDeadlineExceeded,
    failed,
)
from .fingerprint import Fingerprint
from .retry import Deadline
from .upload import (
    _DEADLINE_GRACE_S,
    ApiClient,
    BodySource,
    SentFile,
    SourceFailed,
    UploadLimits,
    UploadUrlDead,
    _post_with_retries,
    _Stopped,
    _upload_url,
)

logger = logging.getLogger(__name__)

# include/mega/transfer.h: TEMPURL_TIMEOUT_TS, after which the SDK gives up an upload URL.
MEGA_UPLOAD_URL_TIMEOUT_S = 172_500
_ZERO_MAC = bytes(BLOCK)
# Pieces whose regions are sealed and sent at once before one waits for a thread.
PIECES_AT_ONCE = 16

# ``MegaBackend._store``: sends (here: completes) the data, then makes and publishes the node.
StoreSent = Callable[
    [
        Callable[[ApiClient, Deadline], SentFile],
        Callable[[], bool],
        str,
        int,
        StoreExtras,
    ],
    StoredFile,
]


class _Passthrough(Exception):
    """A failure of the caller's own (reading the piece, or recording progress): ``error``
    is re-raised unchanged once the regions already sent are accounted for."""

    def __init__(self, error: BaseException) -> None:
        super().__init__("the caller's failure")
        self.error = error


class MegaResumable:
    """The MEGA backend's ``Resumable`` capability.

    ``client`` gives the logged-in client (bounded by a deadline), ``store_sent`` makes
    the node and the link of a completed upload exactly as a streamed upload's are made
    (the backend's own path: folder look-up, ``p``, ``l``, its error mapping).
    """

    longest_open_s = MEGA_UPLOAD_URL_TIMEOUT_S / 2

    def __init__(
        self,
        client: Callable[[Deadline], ApiClient],
        limits: UploadLimits,
        store_sent: StoreSent,
    ) -> None:
        self._client = client
        self._limits = limits
        self._store_sent = store_sent
        self._buffers = _Buffers(limits.region_bytes + BLOCK, limits.parallel + 1)
        # One pool for every piece: a piece is a few regions, and starting threads for
        # each one cost more than sending its last region.
        self._pool = ThreadPoolExecutor(
            limits.parallel * PIECES_AT_ONCE, thread_name_prefix="mega-resumable"
        )

    # -- Resumable ---------------------------------------------------------------------

    def begin(self, size: int) -> OpenUpload:
        deadline = Deadline(self._limits.chunk_policy.deadline_s)
        try:
            return self._fresh(self._client(deadline), size, deadline)
        except StorageError:
            raise
        except Exception as exc:
            raise failed(exc, f"opening a resumable upload of {size} bytes") from None

    def least_piece(self, upload: OpenUpload) -> int:
        """The next whole MEGA chunk: a smaller piece could never be sent on."""
        if upload.offset >= upload.size:
            return 0
        return regions(upload.size, 1, upload.offset)[0][1]

    def append(
        self, upload: OpenUpload, source: PieceSource, length: int, progress: Progress
    ) -> OpenUpload:
        plan = regions(
            upload.size, self._limits.region_bytes, upload.offset, upload.offset + length
        )
        if upload.offset >= upload.size or not plan:
            return upload  # nothing whole to send: the client sends it again, with more
        deadline = Deadline(self._limits.deadline_s)
        try:
            client = self._client(deadline)
            piece = _Piece(client, upload, self._limits, deadline, progress, self._buffers)
            return piece.send(source, plan, self._pool)
        except _Passthrough as passed:
            raise passed.error from None
        except UploadUrlDead as dead:
            logger.warning(
                "MEGA upload URL rejected (%s); the resumable upload starts again at 0",
                dead.cause.name,
            )
            fresh = self.begin(upload.size)
            progress(fresh)
            return fresh
        except StorageError:
            raise
        except Exception as exc:
            raise failed(exc, f"a piece of a resumable upload of {upload.size} bytes") from None

    def finish(
        self, upload: OpenUpload, filename: str, extras: StoreExtras = NO_EXTRAS
    ) -> StoredFile:
        if upload.offset != upload.size:
            raise ValueError("only a complete upload can be finished")
        return self._store_sent(
            lambda client, deadline: self._sent(client, upload, deadline),
            lambda: False,  # the bytes went to MEGA piece by piece: no copy to send again
            filename,
            upload.size,
            extras,
        )

    def abandon(self, upload: OpenUpload) -> None:
        """Nothing to tell MEGA: it drops an upload URL that never completes, and no node
        was made."""

    # -- internals -----------------------------------------------------------------------

    def _fresh(self, client: ApiClient, size: int, deadline: Deadline) -> OpenUpload:
        url = _upload_url(client, size, deadline)
        key = FileKey.generate()
        return OpenUpload(size, 0, _state(url, key, _ZERO_MAC, "", Fingerprint(size).state()))

    def _sent(self, client: ApiClient, upload: OpenUpload, deadline: Deadline) -> SentFile:
        url, key, mac, completion = _parts(upload.state)
        crc = Fingerprint.resume(upload.size, upload.state.get("fp")).crc()
        if upload.size == 0 and not completion:
            # An empty file is one POST of an empty body (js/transfers/upload2.js: '/0').
            answer = _post_with_retries(
                client, url, 0, b"", self._limits, deadline, threading.Event()
            )
            completion = answer or ""
        if not completion:
            raise MegaBadAnswer()
        return SentFile(completion, node_key(key, meta_mac(bytes_a32(mac))), crc)


@dataclass
class _Piece:
    """One piece of an upload: its regions sealed and sent several at once, folded into
    the upload in file order as MEGA acknowledges them."""

    client: ApiClient
    upload: OpenUpload
    limits: UploadLimits
    deadline: Deadline
    progress: Callable[[OpenUpload], None]
    buffers: _Buffers
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.url, self.key, self.mac, self.completion = _parts(self.upload.state)
        # MEGA's fingerprint 'c', taken as the plaintext is read (it is sealed in place
        # before it is sent); the state kept is the one as of what MEGA acknowledged.
        self.fingerprint = Fingerprint.resume(self.upload.size, self.upload.state.get("fp"))

    def send(
        self, source: PieceSource, plan: list[tuple[int, int]], pool: ThreadPoolExecutor
    ) -> OpenUpload:
        """Send ``plan``'s regions, read from ``source``, at most ``limits.parallel`` at
        once on ``pool``; the upload afterwards."""
        # BodySource only reads (a piece keeps no copy to rewind to).
        reader = BodySource(source, self.deadline)  # type: ignore[arg-type]
        free: list[bytearray] = []
        pending: deque[
            tuple[Future[tuple[dict[int, bytes], str | None]], int, bytearray, dict[str, Any]]
        ] = deque()
        failure: BaseException | None = None
        try:
            for offset, length in plan:
                while len(pending) >= self.limits.parallel:
                    free.append(self._collect(*pending.popleft()))
                buffer = free.pop() if free else self.buffers.take()
                self._fill(reader, memoryview(buffer)[:length])
                self.fingerprint.add(memoryview(buffer)[:length])
                job = pool.submit(self._job, buffer, offset, length)
                pending.append((job, length, buffer, self.fingerprint.state()))
        except BaseException as error:
            failure = error
        try:
            # Regions already read still count when the client left: fold what MEGA
            # acknowledged, in order, up to the first region that failed.
            while pending and (failure is None or isinstance(failure, _Passthrough)):
                free.append(self._collect(*pending.popleft()))
        except BaseException as error:
            failure = failure or error
        finally:
            # On failure the other regions must not try again; the POSTs already on the
            # wire end within their timeouts (cut to the deadline) and are waited for, so
            # that no buffer or request outlives the piece.
            self.stop.set()
            for future, _, _, _ in pending:
                future.cancel()
            wait(
                [future for future, _, _, _ in pending],
                self.deadline.remaining() + _DEADLINE_GRACE_S,
            )
            self.buffers.give_back(free + [buffer for _, _, buffer, _ in pending])
        if failure is not None:
            raise failure
        if self.upload.offset == self.upload.size and not self.completion:
            # Every chunk was acknowledged, yet the server does not hold a complete file:
            # only a fresh start helps (as ``upload.send`` does).
            raise UploadUrlDead(MegaApiError(EAGAIN))
        return self.upload

    def _fill(self, source: BodySource, view: memoryview) -> None:
        try:
            source.read_into(view)  # time spent waiting for the client is not MEGA's
        except SourceFailed as failed:
            raise _Passthrough(failed.error) from None

    def _job(
        self, buffer: bytearray, offset: int, length: int
    ) -> tuple[dict[int, bytes], str | None]:
        if self.stop.is_set():
            raise _Stopped()
        macs = seal_region(self.key, offset, buffer, length)
        body = memoryview(buffer)[:length]
        answer = _post_with_retries(
            self.client, self.url, offset, body, self.limits, self.deadline, self.stop
        )
        return macs, answer

    def _collect(
        self,
        future: Future[tuple[dict[int, bytes], str | None]],
        length: int,
        buffer: bytearray,
        fingerprint: dict[str, Any],
    ) -> bytearray:
        """Wait for the earliest region in flight, fold it in and report; its buffer."""
        try:
            macs, answer = future.result(timeout=self.deadline.remaining() + _DEADLINE_GRACE_S)
        except FutureTimeout:
            raise MegaDeadlineExceeded(0, self.deadline.seconds, None) from None
        self.mac = fold_macs(self.key, self.mac, [macs[offset] for offset in sorted(macs)])
        self.completion = answer or self.completion
        offset = self.upload.offset + length
        state = _state(self.url, self.key, self.mac, self.completion, fingerprint)
        self.upload = OpenUpload(self.upload.size, offset, state)
        try:
            self.progress(self.upload)
        except BaseException as exc:
            raise _Passthrough(exc) from exc
        return buffer


class _Buffers:
    """Region buffers kept from one piece to the next: a piece is a few regions, and a
    fresh buffer of several MiB is a new mapping whose every page the kernel faults in
    and zeroes again. At most ``keep`` are kept, one piece's worth."""

    def __init__(self, size: int, keep: int) -> None:
        self._size = size
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self._size)

    def give_back(self, buffers: list[bytearray]) -> None:
        with self._lock:
            room = self._keep - len(self._free)
            self._free.extend(buffers[: max(0, room)])


def _state(
    url: str, key: FileKey, mac: bytes, completion: str, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    return {
        "url": url,
        "key": _b64(key.key_bytes + key.nonce_bytes),
        "mac": _b64(mac),
        "completion": completion,
        "fp": fingerprint,
    }


def _parts(state: dict[str, Any]) -> tuple[str, FileKey, bytes, str]:
    """(upload URL, file key, file MAC so far, completion handle) of a state."""
    words = bytes_a32(base64.b64decode(state["key"]))
    key = FileKey(key=words[:4], nonce=words[4:6])
    return str(state["url"]), key, base64.b64decode(state["mac"]), str(state["completion"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
