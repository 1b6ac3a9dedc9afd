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
* with ``v: 2``, the web client's upload protocol; the upload server's answers are read
  as bytes in every form MEGA's clients know (``upload_answer``), and a completion token
  in hand completes the upload even while another region is still being retried, as the
  SDK does (``TransferSlot::doio``);
* the fingerprint MEGA's apps read (``c``, ``fingerprint.py``) is taken from each
  region's plaintext as it is read, before it is encrypted in place;
* everything runs against one ``Deadline``, after which the upload is given up; the
  API calls (``u``, ``p``, ``l``) and every POST are cut to it too. Time spent waiting
  for a streamed body's bytes does not count: the deadline bounds MEGA's work, and a
  slow client has limits of its own (idle timeout, minimum rate).

Memory is bounded by design: at most ``parallel + 1`` region buffers per upload (the
ones in flight and the one being read), each ``region_bytes`` plus one AES block.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mega.crypto import a32_to_base64, encrypt_key

from app.config import MEGA_DEFAULTS, MegaSettings
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
    MegaBadUploadAnswer,
    MegaChunkError,
    MegaDeadlineExceeded,
    MegaError,
    StreamCannotRestart,
    action_for,
)
from .fingerprint import Fingerprint, fingerprint_attribute
from .retry import Deadline, RetryPolicy, call_with_retries
from .settings import retry_policy

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
TOKEN_BYTES = 36  # include/mega/types.h: UPLOADTOKENLEN
_TEXT_TOKEN = re.compile(rb"^[A-Za-z0-9_-]{36}$")
_ERROR_CODE = re.compile(rb"^-\d{1,3}$")
# The upload protocol asked for with 'u': the web client's and megajs' version.
UPLOAD_PROTOCOL = 2
# After the deadline, how long to wait for in-flight POSTs whose own timeouts are already
# cut to the deadline.
_DEADLINE_GRACE_S = 1.0


class ApiClient(Protocol):
    """What the data path needs from the MEGA client."""

    @property
    def master_key(self) -> Any: ...

    @property
    def secure(self) -> bool: ...

    @property
    def session_tag(self) -> str: ...

    @property
    def link_base(self) -> str: ...

    def api(self, command: dict[str, Any], deadline: Deadline | None = None) -> Any: ...

    def post_region(self, url: str, body: memoryview | bytes, deadline: Deadline) -> bytes: ...


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How an upload is sent and how long it may take (the settings' defaults unless given)."""

    chunk_policy: RetryPolicy = field(default_factory=retry_policy)
    region_bytes: int = int(MEGA_DEFAULTS.upload_region_bytes)
    parallel: int = MEGA_DEFAULTS.upload_parallel  # region POSTs in flight at once
    restarts: int = MEGA_DEFAULTS.upload_restarts  # fresh URLs after the first
    deadline_s: float = MEGA_DEFAULTS.upload_deadline_seconds  # the whole file
    window_bytes: int = int(MEGA_DEFAULTS.upload_window_bytes)

    def __post_init__(self) -> None:
        if self.parallel < 1 or self.region_bytes < 1 or self.window_bytes < 1:
            raise ValueError("an upload needs parallel, region_bytes and window_bytes >= 1")

    @classmethod
    def from_settings(cls, mega: MegaSettings) -> UploadLimits:
        return cls(
            chunk_policy=retry_policy(mega),
            region_bytes=int(mega.upload_region_bytes),
            parallel=mega.upload_parallel,
            restarts=mega.upload_restarts,
            deadline_s=mega.upload_deadline_seconds,
            window_bytes=int(mega.upload_window_bytes),
        )


@dataclass(frozen=True, slots=True)
class SentFile:
    """A file the upload server holds, not yet a node: the completion handle, the key,
    and the CRC part of its fingerprint (``fingerprint.Fingerprint``)."""

    completion: str
    node_key: A32
    crc: bytes


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
        return self._body.rewind()


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
        fingerprint = Fingerprint(size)
        try:
            completion = _send_regions(
                client, url, source, plan, file_key, macs, fingerprint, limits, deadline
            )
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
        return SentFile(
            completion=completion,
            node_key=node_key(file_key, macs.meta_mac()),
            crc=fingerprint.crc(),
        )
    assert last is not None
    raise last


@dataclass(frozen=True, slots=True)
class PlacedNode:
    """A node 'p' made: its handle, and the folder MEGA put it in (None if not said)."""

    handle: str
    parent: str | None


def put_file_node(
    client: ApiClient,
    folder_id: str,
    sent: SentFile,
    filename: str,
    deadline: Deadline | None = None,
    *,
    mtime: int | None = None,
    record: Mapping[str, str] | None = None,
) -> PlacedNode:
    """Turn a completed upload into a file node named ``filename`` in ``folder_id``, with
    the fingerprint MEGA's apps read (``c``) dated ``mtime`` (Unix seconds; default now,
    the upload time).

    ``record`` (the service's custom attributes, ``_`` + at most 7 bytes, string values)
    is written in the same ``p``, as the SDK adds extra attributes to a new file's map
    before it sends it (``MegaClient::putnodes_prepareOneFile``, ``addNodeAttrsFunc``,
    src/megaclient.cpp).

    MEGA may put it elsewhere: into the rubbish bin when ``folder_id`` was removed
    (``CommandPutNodes::procresult`` in the SDK's ``src/commands.cpp``); ``parent`` says.
    """
    key = sent.node_key
    aes_key = (key[0] ^ key[4], key[1] ^ key[5], key[2] ^ key[6], key[3] ^ key[7])
    # The attributes the SDK writes for an upload, in its order: the fingerprint, then the
    # name (File::sendPutnodesOfUpload in src/file.cpp; AttrMap keeps keys sorted).
    attributes = {
        "c": fingerprint_attribute(sent.crc, int(time.time()) if mtime is None else mtime),
        "n": filename,
        **(record or {}),
    }
    answer = client.api(
        {
            "a": "p",
            "t": folder_id,
            # The client's session tag (see MegaClient.session_tag); a resent 'p' is known
            # to MEGA by its request id.
            "i": client.session_tag,
            "n": [
                {
                    "h": sent.completion,
                    "t": 0,
                    "a": attribute_block(attributes, aes_key),
                    "k": a32_to_base64(encrypt_key(key, client.master_key)),
                }
            ],
        },
        deadline,
    )
    try:
        node = answer["f"][0]
        handle = node["h"]
    except (TypeError, KeyError, IndexError):
        raise MegaBadAnswer() from None
    if not isinstance(handle, str) or not handle:
        raise MegaBadAnswer()
    parent = node.get("p")
    return PlacedNode(handle, parent if isinstance(parent, str) else None)


def export_link(
    client: ApiClient, node_handle: str, key: A32, deadline: Deadline | None = None
) -> str:
    """Publish the node and build the link MEGA's web client and mega.py open, on the
    account's site (``client.link_base``)."""
    public = client.api({"a": "l", "n": node_handle}, deadline)
    if not isinstance(public, str) or not public:
        raise MegaBadAnswer()
    return f"{client.link_base}{public}#{a32_to_base64(key)}"


# -- internals ---------------------------------------------------------------------


def _upload_url(client: ApiClient, size: int, deadline: Deadline) -> str:
    # "ssl": 2 asks for an https upload URL, as the SDK always does; without it MEGA may
    # answer with http:// ones (src/commands.cpp, CommandPutFile). "v": 2 is the upload
    # protocol the web client (js/transfers/upload2.js, ulStart) and megajs speak; the
    # answers of every version are read (upload_answer).
    answer = client.api({"a": "u", "s": size, "ssl": 2, "v": UPLOAD_PROTOCOL}, deadline)
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
    fingerprint: Fingerprint,
    limits: UploadLimits,
    deadline: Deadline,
) -> str:
    """Send every region of ``plan`` to ``url`` through the pipeline; the completion handle.
    The fingerprint takes each region's plaintext as it is read, in file order.

    This thread reads the source into a free buffer and hands it to a worker, which seals
    it (MAC, then CTR in place) and POSTs it with retries. At most ``limits.parallel``
    workers run; one more buffer is being filled meanwhile. A region waits while it would
    end more than ``limits.window_bytes`` past the earliest region still in flight.
    """
    stop = threading.Event()
    biggest = max(length for _, length in plan)
    free: list[bytearray] = []
    buffers = 0
    in_flight: dict[Future[str | None], tuple[bytearray, int]] = {}
    completion: str | None = None
    # Chunk MACs by region, kept as soon as a region is sealed, whatever its POST does.
    sealed: dict[int, dict[int, bytes]] = {}

    def collect(block: bool) -> None:
        nonlocal completion
        timeout = deadline.remaining() + _DEADLINE_GRACE_S if block else 0
        done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
        if block and not done:
            raise MegaDeadlineExceeded(0, deadline.seconds, None)
        # Answers before failures: a token that arrived settles the failures beside it.
        for future in sorted(done, key=lambda f: f.exception() is not None):
            free.append(in_flight.pop(future)[0])
            if future.exception() is not None and completion is not None:
                # The token is in hand: MEGA has the whole file, this region included,
                # whatever became of this POST's answer. The SDK completes then, taking
                # the MACs of regions not confirmed yet ("could be a network error getting
                # the result, even though it succeeded server side", TransferSlot::doio in
                # src/transferslot.cpp).
                continue
            answer = future.result()  # a region's failure, token not in hand, ends the try
            completion = answer or completion
            if completion is not None:
                stop.set()  # regions still retrying need not: end their waits

    def too_far(end: int) -> bool:
        earliest = min((offset for _, offset in in_flight.values()), default=end)
        return end - earliest > limits.window_bytes

    def job(buffer: bytearray, offset: int, length: int) -> str | None:
        if stop.is_set():
            raise _Stopped()
        sealed[offset] = seal_region(file_key, offset, buffer, length)
        # A memoryview goes to the socket without a copy; an empty body must be bytes, or
        # requests would switch to chunked transfer encoding.
        body: memoryview | bytes = memoryview(buffer)[:length] if length else b""
        return _post_with_retries(client, url, offset, body, limits, deadline, stop)

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
            fingerprint.add(memoryview(buffer)[:length])  # before it is encrypted in place
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
    for region_macs in sealed.values():
        macs.add_macs(region_macs)
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
            return upload_answer(client.post_region(f"{url}/{offset}", body, deadline))
        except MegaError as exc:
            if action_for(exc) is Action.RESTART_UPLOAD:
                raise UploadUrlDead(exc) from None
            raise

    def pause(seconds: float) -> None:
        # A torn-down pipeline (a failure elsewhere, or the upload complete) ends the wait.
        if stop.wait(seconds):
            raise _Stopped()

    return call_with_retries(
        post,
        limits.chunk_policy,
        deadline,
        retryable=lambda exc: action_for(exc) is Action.RETRY,
        what=f"MEGA upload of region at {offset}",
        sleep=pause,
    )


def upload_answer(body: bytes) -> str | None:
    """What the upload server's answer to a piece says: None while the file is incomplete,
    the completion token (as 'p' takes it) once it is complete; an error code raises
    ``MegaChunkError``, anything else ``MegaBadUploadAnswer``.

    Every protocol version's forms are read, as bytes:

    * an empty body, or "0" (the SDK's acknowledgement, ``TransferSlot::doio`` in
      ``src/transferslot.cpp``): the piece was taken;
    * 36 bytes: the token. A binary one ends in byte 1 and goes to 'p' base64url-encoded;
      otherwise it is the legacy 36-character text token, used as it is (the web client's
      rule, ``onXHRready`` in ``js/transfers/upload2.js``);
    * "-N": an error code (``ulStrError``; ``atoi`` in the SDK).
    """
    if len(body) == TOKEN_BYTES:
        if body[-1] == 1:
            return base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")
        if _TEXT_TOKEN.match(body):
            return body.decode("ascii")
        raise MegaBadUploadAnswer()
    text = body.strip()
    if text in (b"", b"0"):
        return None
    if _ERROR_CODE.match(text):
        raise MegaChunkError(int(text))
    if _TEXT_TOKEN.match(text):  # a text token with a line end
        return text.decode("ascii")
    raise MegaBadUploadAnswer()
