"""A client that costs the machine almost nothing: raw HTTP/1.1 over a socket, the file body
sent with ``sendfile`` straight from the page cache.

On a 2-core machine the client shares the CPU with the server and the emulator; an
httpx client copying 64 KiB pieces through Python would take part of what it measures.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

# Per-operation socket timeout: the current server answers only after the whole MEGA
# upload, which for 1 GiB at a few MB/s takes minutes; anything slower is a failure.
SOCKET_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class UploadTiming:
    status: int
    body: dict[str, Any]
    seconds: float  # first request byte -> last byte of the JSON answer
    sent_seconds: float  # first request byte -> last request byte
    size: int

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    status, _, body = read_response(sock)
    return status, body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("the server closed the connection before answering")
        buffer += piece
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"]) if "content-length" in headers else None
    if status in (204, 304):
        length = 0  # no body, whatever the headers say (RFC 9110)
    while length is None or len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break  # Connection: close without a length: the body ends here
        body += piece
    return status, headers, body


def upload(
    base_url: str, token: str, method: str, path: Path, name: str, size: int | None = None
) -> UploadTiming:
    """``POST /upload?service=mega`` (multipart, field ``file``) or ``PUT /files/<name>``
    with a Content-Length, streaming ``path`` from disk."""
    parts = urlsplit(base_url)
    size = path.stat().st_size if size is None else size
    if method == "POST":
        boundary = secrets.token_hex(16)
        preamble = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        epilogue = f"\r\n--{boundary}--\r\n".encode()
        target = "/upload?service=mega"
        content_type = f"multipart/form-data; boundary={boundary}"
    elif method == "PUT":
        preamble = epilogue = b""
        target = f"/files/{quote(name)}"
        content_type = "application/octet-stream"
    else:
        raise ValueError(method)
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"X-Auth-Token: {token}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(preamble) + size + len(epilogue)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=SOCKET_TIMEOUT_S) as sock,
        path.open("rb") as source,
    ):
        started = time.perf_counter()
        try:
            sock.sendall(head + preamble)
            # socket.sendfile waits with the socket's timeout between pieces, in the kernel.
            sock.sendfile(source, 0, size)
            sock.sendall(epilogue)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (an error); read what it said
        sent = time.perf_counter()
        status, raw = _read_response(sock)
        finished = time.perf_counter()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"raw": raw[:500].decode("utf-8", "replace")}
    return UploadTiming(status, body, finished - started, sent - started, size)


@dataclass
class HealthProbe:
    """GET /health every ``interval_s`` on its own keep-alive connection, in a thread."""

    base_url: str
    interval_s: float = 0.01
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthProbe:
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        parts = urlsplit(self.base_url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        next_at = time.perf_counter()
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                connection.close()  # reconnects on the next request
            # A fixed cadence: a slow answer is followed at once by the next probe
            # instead of pushing every later probe back.
            next_at = max(next_at + self.interval_s, time.perf_counter())
            self._stop.wait(max(0.0, next_at - time.perf_counter()))
        connection.close()

    def summary(self) -> dict[str, float | int]:
        values = sorted(self.latencies_ms)
        if not values:
            return {"count": 0, "errors": self.errors}
        return {
            "count": len(values),
            "errors": self.errors,
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": values[-1],
            "mean_ms": statistics.fmean(values),
        }


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a measured latency)."""
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]
