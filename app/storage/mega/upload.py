"""The upload data path: encrypt a local file, send it to MEGA's upload server, make a node.

mega.py's ``Mega.upload`` is not used: it takes keys from ``random``, computes MACs one
16-byte block at a time in Python, opens a connection per chunk, has no chunk retry
and crashes on files whose last chunk is 16 bytes or shorter. Here:

* the file is read in *regions* of several whole MEGA chunks (``region_bytes``), each
  encrypted and MACed by OpenSSL (see ``crypto``) and POSTed as one request to
  ``<upload url>/<offset>`` on the client's pooled ``requests.Session``;
* a failed region is resent on its own under the retry policy; failures that mean the
  upload URL is dead (the error table's RESTART_UPLOAD) start the file again with a
  fresh URL, a bounded number of times;
* everything runs against one total deadline, after which the upload is given up.

Only one region is held in memory at a time (plaintext and ciphertext).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import requests
from mega.crypto import a32_to_base64, base64_url_encode, encrypt_attr, encrypt_key, make_id

from .crypto import A32, FileKey, MacAccumulator, encrypt_region, node_key, regions
from .errors import (
    EAGAIN,
    ERATELIMIT,
    Action,
    MegaApiError,
    MegaBadAnswer,
    MegaDeadlineExceeded,
    MegaError,
    MegaHttpError,
    MegaTransportError,
    action_for,
)
from .retry import RetryPolicy, call_with_retries

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
LINK_BASE = "https://mega.nz/file/"
_COMPLETION = re.compile(r"^[A-Za-z0-9_-]{36}$")
_ERROR_CODE = re.compile(r"^-\d{1,3}$")


class ApiClient(Protocol):
    """What the data path needs from the MEGA client."""

    http: requests.Session
    master_key: Any

    def api(self, command: dict[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How an upload is sent and how long it may take."""

    region_bytes: int = 8 * MiB
    restarts: int = 3  # fresh upload URLs after the first one
    deadline_s: float = 600.0  # the whole file: all regions, retries and restarts
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    chunk_policy: RetryPolicy = field(default_factory=RetryPolicy)


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


class _Clock:
    """The whole upload's deadline; every wait and timeout is cut to what is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, last: BaseException | None = None) -> None:
        if self.remaining() <= 0:
            raise MegaDeadlineExceeded(0, self.seconds, last)


def send_file(client: ApiClient, source: Path, size: int, limits: UploadLimits) -> SentFile:
    """Encrypt ``source`` (``size`` bytes) and send it to a fresh upload URL.

    Returns the completion handle for the ``p`` command. Raises a ``MegaError`` (or a
    ``requests``-free failure from the client) that ``errors.to_storage_error`` turns
    into the client-facing error.
    """
    clock = _Clock(limits.deadline_s)
    file_key = FileKey.generate()
    plan = regions(size, limits.region_bytes)
    last: MegaError | None = None
    for attempt in range(limits.restarts + 1):
        clock.check(last)
        url = _upload_url(client, size)
        macs = MacAccumulator(file_key)
        try:
            completion = _send_regions(client, url, source, plan, file_key, macs, limits, clock)
        except UploadUrlDead as dead:
            last = dead.cause
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
    client: ApiClient, folder_id: str, sent: SentFile, filename: str
) -> str:
    """Turn a completed upload into a file node named ``filename`` in ``folder_id``."""
    key = sent.node_key
    aes_key = (key[0] ^ key[4], key[1] ^ key[5], key[2] ^ key[6], key[3] ^ key[7])
    attributes = base64_url_encode(encrypt_attr({"n": filename}, aes_key))
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
                    "a": attributes,
                    "k": a32_to_base64(encrypt_key(key, client.master_key)),
                }
            ],
        }
    )
    try:
        handle = answer["f"][0]["h"]
    except (TypeError, KeyError, IndexError):
        raise MegaBadAnswer() from None
    if not isinstance(handle, str) or not handle:
        raise MegaBadAnswer()
    return handle


def export_link(client: ApiClient, node_handle: str, key: A32) -> str:
    """Publish the node and build the link MEGA's web client and mega.py open."""
    public = client.api({"a": "l", "n": node_handle})
    if not isinstance(public, str) or not public:
        raise MegaBadAnswer()
    return f"{LINK_BASE}{public}#{a32_to_base64(key)}"


# -- internals ---------------------------------------------------------------------


def _upload_url(client: ApiClient, size: int) -> str:
    answer = client.api({"a": "u", "s": size})
    url = answer.get("p") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise MegaBadAnswer()
    return url


def _send_regions(
    client: ApiClient,
    url: str,
    source: Path,
    plan: list[tuple[int, int]],
    file_key: FileKey,
    macs: MacAccumulator,
    limits: UploadLimits,
    clock: _Clock,
) -> str:
    completion: str | None = None
    with source.open("rb") as stream:
        for offset, length in plan:
            body = _read_region(stream, offset, length)
            macs.add_region(offset, body)
            ciphertext = encrypt_region(file_key, offset, body)
            del body
            answer = _post_with_retries(client, url, offset, ciphertext, limits, clock)
            completion = answer or completion
    if completion is None:
        # Every region was accepted, yet the server does not consider the file
        # complete: some bytes were lost on its side. Only a fresh start helps.
        raise UploadUrlDead(MegaApiError(EAGAIN))
    return completion


def _read_region(stream: BinaryIO, offset: int, length: int) -> bytes:
    stream.seek(offset)
    data = stream.read(length)
    if len(data) != length:
        raise OSError("the spooled upload file is shorter than announced")
    return data


def _post_with_retries(
    client: ApiClient,
    url: str,
    offset: int,
    ciphertext: bytes,
    limits: UploadLimits,
    clock: _Clock,
) -> str | None:
    """POST one region, resending just this region on retryable failures."""
    clock.check()
    policy = RetryPolicy(
        attempts=limits.chunk_policy.attempts,
        deadline_s=max(0.001, min(limits.chunk_policy.deadline_s, clock.remaining())),
        initial_s=limits.chunk_policy.initial_s,
        max_s=limits.chunk_policy.max_s,
    )

    def post() -> str | None:
        clock.check()
        try:
            return _post_region(client, url, offset, ciphertext, limits, clock)
        except MegaError as exc:
            action = _chunk_action(exc)
            if action is Action.RESTART_UPLOAD:
                raise UploadUrlDead(exc) from None
            raise

    try:
        return call_with_retries(
            post, policy, retryable=lambda exc: _chunk_action(exc) is Action.RETRY,
            what=f"MEGA upload of region at {offset}",
        )
    except MegaDeadlineExceeded as exc:
        # The per-region policy's deadline is the upload's own when that is nearer.
        raise MegaDeadlineExceeded(exc.attempts, clock.seconds, exc.last) from exc.last


def _chunk_action(exc: BaseException) -> Action:
    """The error table's action, with the one meaning that differs on the upload server:
    there, -4 (ERATELIMIT in the API) says the upload must start again on a fresh URL."""
    if isinstance(exc, UploadUrlDead):
        return Action.RESTART_UPLOAD
    if isinstance(exc, MegaApiError) and exc.code == ERATELIMIT:
        return Action.RESTART_UPLOAD
    return action_for(exc)


def _post_region(
    client: ApiClient,
    url: str,
    offset: int,
    ciphertext: bytes,
    limits: UploadLimits,
    clock: _Clock,
) -> str | None:
    """One POST: None while the file is incomplete, the completion handle at the end."""
    remaining = max(0.05, clock.remaining())
    timeout = (min(limits.connect_timeout_s, remaining), min(limits.read_timeout_s, remaining))
    try:
        response = client.http.post(f"{url}/{offset}", data=ciphertext, timeout=timeout)
    except requests.Timeout:
        raise MegaTransportError("timeout") from None
    except requests.RequestException:
        # Connection refused/reset, or dropped mid-body. The exception text carries the
        # upload URL, so it is not passed on.
        raise MegaTransportError("connection") from None
    if response.status_code != 200:
        raise MegaHttpError(response.status_code)
    text = response.text.strip()
    if not text:
        return None
    if _ERROR_CODE.match(text):
        raise MegaApiError(int(text))
    if not _COMPLETION.match(text):
        raise MegaBadAnswer()
    return text
