"""Helpers for the tests of upload records: tokens with each permission, a raw HTTP
client that counts the body bytes it sends, curl as libcurl clients upload, and waits."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tokens_toml

HTTP_TIMEOUT = 60
INDEX_TIMEOUT_S = 60


@dataclass(frozen=True)
class Tokens:
    """One token per permission: upload only, can_list (its own), can_manage (all)."""

    uploader: str
    lister: str
    manager: str

    @classmethod
    def fresh(cls) -> Tokens:
        return cls(*(secrets.token_urlsafe(24) for _ in range(3)))

    def write(self, path: Path, **extra: dict[str, Any]) -> Path:
        path.write_text(
            tokens_toml(
                uploader={"secret": self.uploader},
                lister={"secret": self.lister, "can_list": True},
                manager={"secret": self.manager, "can_manage": True},
                **extra,
            )
        )
        return path


def auth(token: str) -> dict[str, str]:
    return {"X-Auth-Token": token}


def digest_field(data: bytes) -> str:
    """RFC 9530: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def wait_for_index(url: str, token: str, timeout_s: float = INDEX_TIMEOUT_S) -> None:
    """Until ``GET /uploads`` answers (the index is built); ``token`` may list."""
    deadline = time.monotonic() + timeout_s
    status = 0
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/uploads", headers=auth(token), timeout=HTTP_TIMEOUT).status_code
        if status == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"the index of uploads was not built in time (last status {status})")


def listed(url: str, credential: str, **params: Any) -> list[dict[str, Any]]:
    """Every upload the token ``credential`` may see, page after page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(
            f"{url}/uploads", headers=auth(credential), params=query, timeout=HTTP_TIMEOUT
        )
        assert page.status_code == 200, page.text
        rows += page.json()["uploads"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("the listing never ended")


@dataclass(frozen=True)
class RawAnswer:
    interim: list[str]  # status lines of 1xx answers
    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes_sent: int


def put_expecting_continue(
    port: int, path: str, headers: dict[str, str], body: bytes, timeout_s: float = 30
) -> RawAnswer:
    """``PUT`` (or another method in ``headers['_method']``) with ``Expect: 100-continue``,
    written on a bare socket: the body is sent only after a ``100 Continue``, and the
    bytes of it that went out are counted."""
    method = headers.pop("_method", "PUT")
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Expect: 100-continue"]
    head += [f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    sent = 0
    interim: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        reader = sock.makefile("rb")
        while True:
            status_line = reader.readline().decode("latin-1").strip()
            headers_in = _read_headers(reader)
            status = int(status_line.split()[1])
            if status != 100:
                break
            interim.append(status_line)
            sock.sendall(body)
            sent += len(body)
        length = int(headers_in.get("content-length", "0"))
        answer = reader.read(length)
    return RawAnswer(interim, status, headers_in, answer, sent)


def _read_headers(reader: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = reader.readline().decode("latin-1")
        if line in ("\r\n", "\n", ""):
            return headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


@dataclass(frozen=True)
class CurlAnswer:
    status: int
    body: dict[str, Any]
    uploaded: int  # curl's %{size_upload}: body bytes it sent


def curl(*args: str) -> CurlAnswer:
    """Run curl (as libcurl clients upload: it sends ``Expect: 100-continue`` for bodies
    over 1 MiB) and read its answer and how many body bytes it sent."""
    binary = shutil.which("curl")
    if binary is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [binary, "-sS", "-w", "\n%{http_code} %{size_upload}", *args],
        capture_output=True,
        timeout=HTTP_TIMEOUT * 2,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text, _, tail = result.stdout.decode().rpartition("\n")
    status, uploaded = tail.split()
    return CurlAnswer(int(status), json.loads(text) if text else {}, int(float(uploaded)))
