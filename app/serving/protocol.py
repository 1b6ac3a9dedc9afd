"""HTTP/1.1 protocol limits that uvicorn's httptools protocol does not have.

uvicorn with httptools accepts a request head of any size (httptools gathers a header
value in Python bytes until it ends) and waits for it forever. Facing the internet, one
endless header grows the process by hundreds of MiB, and a few hundred connections that
trickle a byte now and then hold every file descriptor. This subclass adds, per
connection:

- a size limit on the request line (414) and on the whole head (431), counted on the
  bytes received while a head is incomplete, so at most one socket read lies beyond it;
- a deadline for a complete head, from the connection's start or a request's first byte
  (408); an idle keep-alive connection is closed by uvicorn's own keep-alive timeout;
- a cap on connections open at once from one client address (429), except from the
  trusted proxies of FORWARDED_ALLOW_IPS, which carry everyone's connections;
- the service's JSON error body for every answer given here, including uvicorn's 400
  for bytes that are not HTTP.

Each refusal closes the connection and writes one log line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import Counter
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.access.addresses import client_key
from app.api.errors import (
    BAD_REQUEST,
    HEADERS_TOO_LARGE,
    REQUEST_TIMEOUT,
    TOO_MANY_CONNECTIONS,
    URI_TOO_LONG,
    ErrorKind,
    error_body,
)
from app.config import Settings

log = logging.getLogger("paimon.http")
# How long, and how much, a refused connection may still send (its bytes are dropped)
# before it is closed; past LINGER_BYTES it is no longer read at all.
LINGER_S = 2.0
LINGER_BYTES = 256 * 1024


class TrustedProxies:
    """The FORWARDED_ALLOW_IPS list: addresses and networks, or "*" for any."""

    def __init__(self, spec: str | list[str]) -> None:
        items = spec if isinstance(spec, list) else spec.split(",")
        items = [item.strip() for item in items if item.strip()]
        self.everyone = "*" in items
        self.networks = []
        for item in items:
            if item != "*":
                try:
                    self.networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    continue  # e.g. a unix socket name: never a TCP peer's address

    def __contains__(self, host: str) -> bool:
        if self.everyone:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def raw_error(kind: ErrorKind, message: str) -> bytes:
    """A complete HTTP/1.1 error response with the service's JSON body, closing the connection."""
    body = json.dumps(error_body(kind.code, message)).encode()
    lines = [STATUS_LINE[kind.status]]
    fields = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        **{name.lower(): value for name, value in kind.response_headers().items()},
        "connection": "close",
    }
    lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in fields.items()]
    return b"".join([*lines, b"\r\n", body])


class RefusalLog:
    """One log line per kind of refusal and second at most, with a count of the rest.

    Under attack every refused connection would otherwise write its own line: hundreds at
    once when a slowloris's deadlines pass together, which costs the event loop time and
    floods the log.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._last: dict[int, float] = {}
        self._unlogged: Counter[int] = Counter()

    def log(self, peer: str, status: int, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(status, -self.interval_s) < self.interval_s:
            self._unlogged[status] += 1
            return
        self._last[status] = now
        more = self._unlogged.pop(status, 0)
        suffix = f" (and {more} more since the last such line)" if more else ""
        log.warning("refused %s with %d: %s%s", peer, status, message, suffix)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; see ``limited_protocol``."""

    settings: ClassVar[Settings]
    open_per_client: ClassVar[Counter[str]]
    refusals: ClassVar[RefusalLog]
    trusted: ClassVar[TrustedProxies | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.trusted is None:  # parsed once per server, on its first connection
            cls.trusted = TrustedProxies(self.config.forwarded_allow_ips)
        self._trusted = cls.trusted
        self._client_key: str | None = None
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # Connection life.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        cap = self.settings.serving.max_connections_per_client
        if host and cap and host not in self._trusted:
            key = client_key(host)
            if self.open_per_client[key] >= cap:
                # Closed at once, not after a lingering close: the point is to give the
                # file descriptor back, and the client has rarely sent anything yet.
                self._refuse(
                    TOO_MANY_CONNECTIONS,
                    f"more than {cap} connections at once from one address",
                    linger=False,
                )
                return
            self.open_per_client[key] += 1
            self._client_key = key
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._client_key is not None:
            self.open_per_client[self._client_key] -= 1
            if self.open_per_client[self._client_key] <= 0:
                del self.open_per_client[self._client_key]
            self._client_key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            # The rest of a refused request: dropped until the close, up to a point.
            self._head_bytes += len(data)
            if self._head_bytes > LINGER_BYTES:
                self.transport.pause_reading()
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if not self._in_head or self._refused or self.transport.is_closing():
            return
        if len(getattr(self, "url", b"")) > self.settings.serving.max_request_line_bytes:
            self._refuse(URI_TOO_LONG, "the request line is too long")
        elif self._head_bytes > self.settings.serving.max_request_head_bytes:
            self._refuse(HEADERS_TOO_LARGE, "the request headers are too large")

    # Parser callbacks: a head ends with its headers; the next one starts after its message.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # whatever arrives next is the next request's head

    # What uvicorn answers itself.

    def send_400_response(self, msg: str) -> None:
        self._refuse(BAD_REQUEST, "the request is not valid HTTP/1.1")

    # Helpers.

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(
            self.settings.serving.request_head_timeout_seconds, self._head_deadline_passed
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a response still being sent: end after that one.
            self.cycle.keep_alive = False
            return
        self._refuse(REQUEST_TIMEOUT, "the request headers did not arrive in time")

    def _refuse(self, kind: ErrorKind, message: str, linger: bool = True) -> None:
        """Answer, then close once the client has had a moment to read the answer.

        Closing at once, with the client's unread bytes still arriving, makes the kernel
        reset the connection, and a reset can destroy the answer before the client reads
        it. So, like nginx's lingering close: send the answer and a FIN, discard what
        still arrives, and close after LINGER_S at the latest.
        """
        self._cancel_head_timer()
        self._in_head = False
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._head_bytes = 0
        peer = self.client[0] if self.client else "unknown client"
        self.refusals.log(peer, kind.status, message)
        self.transport.write(raw_error(kind, message))
        if not linger:
            self.transport.close()  # after the answer is written
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for uvicorn's ``http=`` option, with its own connection counts.

    A fresh class per server, so that each process (each gunicorn worker) counts only the
    connections it holds itself.
    """
    attributes = {"settings": settings, "open_per_client": Counter(), "refusals": RefusalLog()}
    return type("PaimonHttpProtocol", (LimitedHttpToolsProtocol,), attributes)
