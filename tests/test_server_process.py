"""End to end: a real server process on 127.0.0.1, real sockets, real files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import ROOT, ServerProcess

WAIT_S = 15


def token_of(server: ServerProcess) -> dict[str, str]:
    return {"X-Auth-Token": server.env["AUTH_TOKEN"]}


def spool_is_empty_soon(spool: Path) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if not any(spool.iterdir()):
            return True
        time.sleep(0.05)
    return False


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):  # the socket's timeout bounds each wait
        received += chunk
    return received


def test_uploaded_files_download_byte_for_byte(live_server) -> None:
    server = live_server()
    data = os.urandom(5 * 1024 * 1024 + 7)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        form = http.post(
            "/upload?service=local", headers=token_of(server), files={"file": ("big.bin", data)}
        )
        raw = http.put("/files/big-raw.bin", headers=token_of(server), content=data)
        for response in (form, raw):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["sha256"] == hashlib.sha256(data).hexdigest()
            assert body["link"].startswith(server.url)
            assert http.get(body["link"]).content == data
    assert spool_is_empty_soon(server.tmp / "spool")


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def send_part_of_an_upload(
    server: ServerProcess, method: str, path: str, body: bytes
) -> socket.socket:
    """Announce 50 MiB, send only ``body``, and return the still-open socket."""
    content_type = (
        "multipart/form-data; boundary=b0undary" if method == "POST" else "application/octet-stream"
    )
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-Auth-Token: {server.env['AUTH_TOKEN']}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.sendall(head + body)
    return sock


def test_client_disconnect_mid_upload_leaves_nothing_behind(live_server) -> None:
    server = live_server()
    spool, files = server.tmp / "spool", server.tmp / "files"
    preamble = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="c"\r\n\r\n'
    # Multipart is spooled to a temporary file; a PUT with a length is relayed into storage.
    for method, path, prefix, lands_in in [
        ("POST", "/upload", preamble, spool),
        ("PUT", "/files/cut.bin", b"", files),
    ]:
        with send_part_of_an_upload(server, method, path, prefix + b"p" * (3 * 1024 * 1024)):
            wait_for(lambda d=lands_in: files_under(d), f"the {method} upload to arrive")
        # The client vanished mid-body.
        wait_for(lambda: not files_under(spool) and not files_under(files), "the cleanup")
    assert httpx.get(f"{server.url}/health", timeout=WAIT_S).status_code == 200


def test_put_with_a_length_is_relayed_without_a_temporary_file(live_server) -> None:
    server = live_server()
    spool, files = server.tmp / "spool", server.tmp / "files"
    first, rest = os.urandom(4 * 1024 * 1024), os.urandom(4 * 1024 * 1024 + 3)
    head = (
        f"PUT /files/relayed.bin HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-Auth-Token: {server.env['AUTH_TOKEN']}\r\nContent-Length: {len(first + rest)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(head + first)
        # Half the body is in: storage is already being written, and nothing is spooled.
        wait_for(lambda: files_under(files), "storage to receive the first bytes")
        assert files_under(spool) == []
        sock.sendall(rest)
        answer = read_until_closed(sock).decode()
    assert answer.startswith("HTTP/1.1 200"), answer
    body = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert body["size"] == len(first + rest)
    assert body["sha256"] == hashlib.sha256(first + rest).hexdigest()
    assert httpx.get(body["link"], timeout=WAIT_S).content == first + rest
    assert [path.name for path in files_under(files)] == ["relayed.bin"]


def test_oversized_content_length_is_refused_before_the_body_is_sent(live_server) -> None:
    server = live_server(MAX_UPLOAD_BYTES="1MiB")
    request = (
        f"PUT /files/huge.iso HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-Auth-Token: {server.env['AUTH_TOKEN']}\r\nContent-Length: {10**12}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
        sock.sendall(request)  # headers only: not one byte of the body
        answer = read_until_closed(sock).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"code":"too_large"' in answer


def test_oversized_chunked_upload_is_refused_while_streaming(live_server) -> None:
    server = live_server(MAX_UPLOAD_BYTES="1MiB")
    sent = 0

    def body():
        nonlocal sent
        for _ in range(64):  # 64 MiB offered, far more than the limit
            sent += 1024 * 1024
            yield b"c" * (1024 * 1024)

    try:
        response = httpx.put(
            f"{server.url}/files/huge.iso", headers=token_of(server), content=body(), timeout=WAIT_S
        )
        assert response.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while the client is still sending
    assert sent < 64 * 1024 * 1024, "the whole body was read before refusing it"
    assert spool_is_empty_soon(server.tmp / "spool")


def test_concurrent_uploads_all_succeed_intact(live_server) -> None:
    server = live_server(MAX_CONCURRENT_UPLOADS="8")
    payloads = [os.urandom(1024 * 1024 + n) for n in range(8)]

    def upload(data: bytes) -> tuple[int, dict]:
        response = httpx.post(
            f"{server.url}/upload?service=local",
            headers=token_of(server),
            files={"file": (f"f{len(data)}.bin", data)},
            timeout=60,
        )
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(upload, payloads))
    for data, (status, body) in zip(payloads, results, strict=True):
        assert status == 200, body
        assert body["sha256"] == hashlib.sha256(data).hexdigest()
        assert httpx.get(body["link"], timeout=WAIT_S).content == data
    assert len({body["handle"] for _, body in results}) == 8
    assert spool_is_empty_soon(server.tmp / "spool")


def test_development_run_generates_a_token_and_serves_local_storage(
    live_server, tmp_path: Path
) -> None:
    server = live_server(
        [sys.executable, str(ROOT / "server.py")],
        cwd=tmp_path,
        AUTH_TOKEN=None,
        STORAGE_BACKEND=None,
        LOCAL_STORAGE_DIR=None,
    )
    match = re.search(r"this run's token is: (\S+)", server.log())
    assert match, server.log()
    assert server.log().count(match.group(1)) == 1, "the token is printed exactly once"
    response = httpx.put(
        f"{server.url}/files/first.txt",
        headers={"Authorization": f"Bearer {match.group(1)}"},
        content=b"hello",
        timeout=WAIT_S,
    )
    assert response.status_code == 200, response.text
    assert response.json()["service"] == "local"
    assert (tmp_path / "data" / "files" / response.json()["handle"] / "first.txt").exists()
    assert httpx.put(f"{server.url}/files/x", content=b"1", timeout=WAIT_S).status_code == 401


def test_a_client_that_stops_sending_gets_408_and_frees_its_slot(live_server) -> None:
    server = live_server(CLIENT_IDLE_TIMEOUT_SECONDS="1", MAX_CONCURRENT_UPLOADS="1")
    spool, files = server.tmp / "spool", server.tmp / "files"
    preamble = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="s"\r\n\r\n'
    for method, path, body in [
        ("PUT", "/files/stalled.bin", b"x" * 1000),
        ("POST", "/upload", preamble + b"x" * 1000),
    ]:
        # Announces 50 MiB, sends a little, then keeps the connection open and silent.
        with send_part_of_an_upload(server, method, path, body) as sock:
            answer = read_until_closed(sock).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"code":"client_timeout"' in answer
        wait_for(lambda: not files_under(spool) and not files_under(files), "the cleanup")
    # The only upload slot is free again.
    response = httpx.put(
        f"{server.url}/files/next.txt", headers=token_of(server), content=b"ok", timeout=WAIT_S
    )
    assert response.status_code == 200
