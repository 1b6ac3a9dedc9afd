"""The upload data path: encrypt a file or a body as it arrives, send it to MEGA's upload
server, make a node.

mega.py's ``Mega.upload`` is not used: it takes keys from ``random``, computes MACs one
16-byte block at a time in Python, opens a connection per chunk, has no chunk retry
and crashes on files whose last chunk is 16 bytes or shorter. Here:

* the data is read in *regions* of several whole MEGA chunks (``region_bytes``) into
  reused buffers, each MACed and encrypted in place by OpenSSL (``crypto.seal_region``)
  and POSTed as one request to ``<upload url>/<offset>`` on the client's pooled
  ``requests.Session``;
* a pipeline keeps up to ``parallel`` regions in worker threads at once: sealing one
  region overlaps the network sends of the others, and the thread that reads the source
  (a spooled file, or the request body while it arrives) only reads. Chunk MACs are
  collected by offset, so the file MAC is computed in file order whatever order the
  regions finish in;
* a failed region is resent on its own under the retry policy (its buffer is kept until
  MEGA acknowledged it); failures that mean the upload URL is dead (the catalogue's
  RESTART_UPLOAD) start the file again with a fresh URL, a bounded number of times;
* no region is sent further than ``window_bytes`` past the earliest one not yet confirmed:
  the SDK keeps that gap under 256 MiB (``TransferSlot::MAX_GAP_SIZE`` in
  ``src/transferslot.cpp``) because the upload server refuses pieces beyond it with -4;
* the upload URL is asked for with ``ssl: 2`` as the SDK does (``CommandPutFile`` in
  ``src/commands.cpp``), and an ``http://`` URL is refused when the API is ``https://``:
  file data and the completion token never cross the internet unencrypted;
* everything runs against one ``Deadline``, after which the upload is given up; the
  API calls (``u``, ``p``, ``l``) and every POST are cut to it too. Time spent waiting
  for a streamed body's bytes does not count: the deadline bounds MEGA's work, and a
  slow client has limits of its own (idle timeout, minimum rate).

Memory is bounded by design: at most ``parallel + 1`` region buffers per upload (the
ones in flight and the one being read), each ``region_bytes`` plus one AES block.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mega.crypto import a32_to_base64, encrypt_key, make_id

from app.storage.base import BodyStream

from .crypto import (
    A32,
    BLOCK,
    FileKey,
    MacAccumulator,
    attribute_block,
    node_key,
    regions,
    seal_region,
)
from .errors import (
    EAGAIN,
    Action,
    InsecureUploadUrl,
    MegaApiError,
    MegaBadAnswer,
    MegaChunkError,
    MegaDeadlineExceeded,
    MegaError,
    StreamCannotRestart,
    action_for,
)
from .retry import Deadline, RetryPolicy, call_with_retries
from .settings import default_retry_policy, setting_default

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
LINK_BASE = "https://mega.nz/file/"
_COMPLETION = re.compile(r"^[A-Za-z0-9_-]{36}$")
_ERROR_CODE = re.compile(r"^-\d{1,3}$")
# After the deadline, how long to wait for in-flight POSTs whose own timeouts are already
# cut to the deadline.
_DEADLINE_GRACE_S = 1.0


class ApiClient(Protocol):
    """What the data path needs from the MEGA client."""

    @property
    def master_key(self) -> Any: ...

    @property
    def secure(self) -> bool: ...

    def api(self, command: dict[str, Any], deadline: Deadline | None = None) -> Any: ...

    def post_region(self, url: str, body: memoryview | bytes, deadline: Deadline) -> str: ...


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How an upload is sent and how long it may take (the settings' defaults unless given)."""

    chunk_policy: RetryPolicy = field(default_factory=default_retry_policy)
    region_bytes: int = int(setting_default("mega_upload_region_bytes"))
    parallel: int = setting_default("mega_upload_parallel")  # region POSTs in flight at once
    restarts: int = setting_default("mega_upload_restarts")  # fresh URLs after the first
    deadline_s: float = setting_default("mega_upload_deadline_seconds")  # the whole file
    window_bytes: int = int(setting_default("mega_upload_window_bytes"))

    def __post_init__(self) -> None:
        if self.parallel < 1 or self.region_bytes < 1 or self.window_bytes < 1:
            raise ValueError("an upload needs parallel, region_bytes and window_bytes >= 1")


@dataclass(frozen=True, slots=True)
class SentFile:
    """A file the upload server holds, not yet a node: the completion handle and key."""

    completion: str
    node_key: A32


class UploadUrlDead(MegaError):
    """The upload server wants the file started again on a fresh URL."""

    name = "restart_upload"

    def __init__(self, cause: MegaError) -> None:
        self.cause = cause
        super().__init__(f"MEGA upload must restart ({cause.name})")


class SourceFailed(Exception):
    """Reading the data to upload failed (the client went away); ``error`` is what the
    source raised, for the caller to re-raise unchanged."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__("reading the upload's source failed")


class _Stopped(Exception):
    """The pipeline is being torn down; an in-flight region does not try again."""


# -- sources -------------------------------------------------------------------------


class RegionSource(Protocol):
    """Where the plaintext comes from, region after region, in file order."""

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` completely with the next bytes; raise ``SourceFailed`` otherwise."""
        ...

    def rewind(self) -> bool:
        """Start again from byte 0 for a fresh upload URL; False when that is impossible."""
        ...


class FileSource:
    """A spooled file: read with ``readinto`` straight into the region buffers."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read_into(self, view: memoryview) -> None:
        filled = 0
        while filled < len(view):
            got = self._stream.readinto(view[filled:])
            if not got:
                raise OSError("the spooled upload file is shorter than announced")
            filled += got

    def rewind(self) -> bool:
        self._stream.seek(0)
        return True


class BodySource:
    """A request body while it arrives; rewound when the body keeps a copy of itself.

    The time a read blocks is time spent waiting for the client (MEGA's side never holds
    a read up: when it is slow, this thread waits in the pipeline instead and the bytes
    pile up behind the read), so it is taken off ``deadline``.
    """

    # Read in pieces of this size: a body hands out a fresh bytes per read, so one read of
    # a whole region would hold a second copy of it (and a relay joins its parts: a third).
    PIECE = 1024 * 1024

    def __init__(self, body: BodyStream, deadline: Deadline) -> None:
        self._body = body
        self._deadline = deadline

    def read_into(self, view: memoryview) -> None:
        filled = 0
        while filled < len(view):
            started = time.monotonic()
            try:
                data = self._body.read(min(self.PIECE, len(view) - filled))
            except Exception as exc:
                raise SourceFailed(exc) from exc
            finally:
                self._deadline.exclude(time.monotonic() - started)
            if not data:
                raise SourceFailed(EOFError("the body ended before its announced size"))
            view[filled : filled + len(data)] = data
            filled += len(data)

    def rewind(self) -> bool:
        rewind = getattr(self._body, "rewind", None)
        return bool(rewind is not None and rewind())


# -- the upload ------------------------------------------------------------------------


def send_file(
    client: ApiClient,
    source: Path,
    size: int,
    limits: UploadLimits,
    deadline: Deadline | None = None,
) -> SentFile:
    """Encrypt ``source`` (``size`` bytes) and send it to a fresh upload URL.

    Returns the completion handle for the ``p`` command. Raises a ``MegaError`` (or a
    ``requests``-free failure from the client) that ``errors.to_storage_error`` turns
    into the client-facing error.
    """
    with source.open("rb", buffering=0) as stream:
        return send(client, FileSource(stream), size, limits, deadline)


def send_stream(
    client: ApiClient,
    body: BodyStream,
    size: int,
    limits: UploadLimits,
    deadline: Deadline | None = None,
) -> SentFile:
    """Like ``send_file`` for a body read while it arrives. ``SourceFailed`` carries what
    ``body.read`` raised; a restart MEGA asks for fails with ``StreamCannotRestart``."""
    deadline = deadline or Deadline(limits.deadline_s)
    return send(client, BodySource(body, deadline), size, limits, deadline)


def send(
    client: ApiClient,
    source: RegionSource,
    size: int,
    limits: UploadLimits,
    deadline: Deadline | None = None,
) -> SentFile:
    """The one upload loop behind ``send_file`` and ``send_stream``."""
    deadline = deadline or Deadline(limits.deadline_s)
    file_key = FileKey.generate()
    plan = regions(size, limits.region_bytes)
    last: MegaError | None = None
    for attempt in range(limits.restarts + 1):
        deadline.check(last)
        url = _upload_url(client, size, deadline)
        macs = MacAccumulator(file_key)
        try:
            completion = _send_regions(client, url, source, plan, file_key, macs, limits, deadline)
        except UploadUrlDead as dead:
            last = dead.cause
            if not source.rewind():
                # A streamed body that keeps no copy of itself cannot start again: what
                # was sent is gone. The client gets a 502 saying to send the file again.
                # The service's bodies keep a private copy (``BodyRelay.rewind``), and a
                # spooled file seeks back: both restart on their own.
                raise StreamCannotRestart(dead.cause) from None
            logger.warning(
                "MEGA upload URL rejected (%s); restarting the file (%d/%d)",
                dead.cause.name,
                attempt + 1,
                limits.restarts,
            )
            continue
        return SentFile(completion=completion, node_key=node_key(file_key, macs.meta_mac()))
    assert last is not None
    raise last


def put_node(
    client: ApiClient,
    folder_id: str,
    sent: SentFile,
    filename: str,
    deadline: Deadline | None = None,
    attributes: Mapping[str, str] | None = None,
) -> str:
    """Turn a completed upload into a file node named ``filename`` in ``folder_id``.

    ``attributes`` (custom ones, ``_`` + at most 7 bytes, string values) are written in
    the same ``p``, as the SDK adds extra attributes to a new file's map before it sends
    it (``MegaClient::putnodes_prepareOneFile``, ``addNodeAttrsFunc``, src/megaclient.cpp).
    """
    key = sent.node_key
    aes_key = (key[0] ^ key[4], key[1] ^ key[5], key[2] ^ key[6], key[3] ^ key[7])
    answer = client.api(
        {
            "a": "p",
            "t": folder_id,
            # A request id lets MEGA recognise a resent 'p' instead of making a twin node.
            "i": make_id(10),
            "n": [
                {
                    "h": sent.completion,
                    "t": 0,
                    "a": attribute_block({"n": filename, **(attributes or {})}, aes_key),
                    "k": a32_to_base64(encrypt_key(key, client.master_key)),
                }
            ],
        },
        deadline,
    )
    try:
        handle = answer["f"][0]["h"]
    except (TypeError, KeyError, IndexError):
        raise MegaBadAnswer() from None
    if not isinstance(handle, str) or not handle:
        raise MegaBadAnswer()
    return handle


def export_link(
    client: ApiClient, node_handle: str, key: A32, deadline: Deadline | None = None
) -> str:
    """Publish the node and build the link MEGA's web client and mega.py open."""
    public = client.api({"a": "l", "n": node_handle}, deadline)
    if not isinstance(public, str) or not public:
        raise MegaBadAnswer()
    return f"{LINK_BASE}{public}#{a32_to_base64(key)}"


# -- internals ---------------------------------------------------------------------


def _upload_url(client: ApiClient, size: int, deadline: Deadline) -> str:
    # "ssl": 2 asks for an https upload URL, as the SDK always does; without it MEGA may
    # answer with http:// ones (src/commands.cpp, CommandPutFile).
    answer = client.api({"a": "u", "s": size, "ssl": 2}, deadline)
    url = answer.get("p") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise MegaBadAnswer()
    if client.secure and not url.startswith("https://"):
        raise InsecureUploadUrl()
    return url


def _send_regions(
    client: ApiClient,
    url: str,
    source: RegionSource,
    plan: list[tuple[int, int]],
    file_key: FileKey,
    macs: MacAccumulator,
    limits: UploadLimits,
    deadline: Deadline,
) -> str:
    """Send every region of ``plan`` to ``url`` through the pipeline; the completion handle.

    This thread reads the source into a free buffer and hands it to a worker, which seals
    it (MAC, then CTR in place) and POSTs it with retries. At most ``limits.parallel``
    workers run; one more buffer is being filled meanwhile. A region waits while it would
    end more than ``limits.window_bytes`` past the earliest region still in flight.
    """
    stop = threading.Event()
    biggest = max(length for _, length in plan)
    free: list[bytearray] = []
    buffers = 0
    in_flight: dict[Future[tuple[dict[int, bytes], str | None]], tuple[bytearray, int]] = {}
    completion: str | None = None

    def collect(block: bool) -> None:
        nonlocal completion
        timeout = deadline.remaining() + _DEADLINE_GRACE_S if block else 0
        done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
        if block and not done:
            raise MegaDeadlineExceeded(0, deadline.seconds, None)
        for future in done:
            free.append(in_flight.pop(future)[0])
            region_macs, answer = future.result()  # a region's failure ends the attempt
            macs.add_macs(region_macs)
            completion = answer or completion

    def too_far(end: int) -> bool:
        earliest = min((offset for _, offset in in_flight.values()), default=end)
        return end - earliest > limits.window_bytes

    def job(buffer: bytearray, offset: int, length: int) -> tuple[dict[int, bytes], str | None]:
        if stop.is_set():
            raise _Stopped()
        region_macs = seal_region(file_key, offset, buffer, length)
        # A memoryview goes to the socket without a copy; an empty body must be bytes, or
        # requests would switch to chunked transfer encoding.
        body: memoryview | bytes = memoryview(buffer)[:length] if length else b""
        answer = _post_with_retries(client, url, offset, body, limits, deadline, stop)
        return region_macs, answer

    pool = ThreadPoolExecutor(limits.parallel, thread_name_prefix="mega-upload")
    try:
        for offset, length in plan:
            while len(in_flight) >= limits.parallel or (in_flight and too_far(offset + length)):
                collect(block=True)
            if in_flight:
                collect(block=False)  # pick up finished regions early: failures stop sooner
            deadline.check()
            if free:
                buffer = free.pop()
            else:
                buffer = bytearray(biggest + BLOCK)
                buffers += 1
            source.read_into(memoryview(buffer)[:length])
            in_flight[pool.submit(job, buffer, offset, length)] = (buffer, offset)
        while in_flight:
            collect(block=True)
    finally:
        # On failure the other regions must not try again; the POSTs already on the wire
        # end within their timeouts (cut to the deadline), and are waited for so that no
        # buffer or request outlives the attempt.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    assert buffers <= limits.parallel + 1
    if completion is None:
        # Every region was accepted, yet the server does not consider the file
        # complete: some bytes were lost on its side. Only a fresh start helps.
        raise UploadUrlDead(MegaApiError(EAGAIN))
    return completion


def _post_with_retries(
    client: ApiClient,
    url: str,
    offset: int,
    body: memoryview | bytes,
    limits: UploadLimits,
    deadline: Deadline,
    stop: threading.Event,
) -> str | None:
    """POST one region, resending just this region on retryable failures (including the
    upload server's -14, "send that piece again")."""

    def post() -> str | None:
        if stop.is_set():
            raise _Stopped()
        try:
            return _answer(client.post_region(f"{url}/{offset}", body, deadline))
        except MegaError as exc:
            if action_for(exc) is Action.RESTART_UPLOAD:
                raise UploadUrlDead(exc) from None
            raise

    return call_with_retries(
        post,
        limits.chunk_policy,
        deadline,
        retryable=lambda exc: action_for(exc) is Action.RETRY,
        what=f"MEGA upload of region at {offset}",
    )


def _answer(text: str) -> str | None:
    """An upload server answer: None while the file is incomplete, the completion handle
    at the end; an error code raises ``MegaChunkError``."""
    if not text:
        return None
    if _ERROR_CODE.match(text):
        raise MegaChunkError(int(text))
    if not _COMPLETION.match(text):
        raise MegaBadAnswer()
    return text
