"""End to end: a real server process on 127.0.0.1, real sockets, real files."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import MEGA_OUT_OF_REACH, ROOT, ServerProcess, free_port, service_env

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
    """The files in a folder, but for the records and locks local storage keeps beside
    the uploads (``<id>.json``, ``.locks/``)."""
    if not folder.exists():
        return []
    return [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and ".locks" not in path.parts
        and not (path.parent == folder and path.suffix == ".json")
    ]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def send_part_of_an_upload(
    server: ServerProcess, method: str, path: str, body: bytes
) -> socket.socket:
    """Announce 50 MiB, send only ``body``, and return the still-open socket."""
    kind = "application/octet-stream"
    if method == "POST":
        kind = "multipart/form-data; boundary=b0undary"
    sock = open_upload(server, method, path, 50 * 1024 * 1024, kind)
    sock.sendall(body)
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


def test_development_run_keeps_its_token_across_restarts_and_serves_local_storage(
    live_server, tmp_path: Path
) -> None:
    def development_run() -> ServerProcess:
        return live_server(
            [sys.executable, str(ROOT / "server.py")],
            cwd=tmp_path,
            AUTH_TOKEN=None,
            STORAGE_BACKEND=None,
            LOCAL_STORAGE_DIR=None,
        )

    first = development_run()
    kept = tmp_path / "data" / "development-token"
    token = kept.read_text().strip()
    assert len(token) >= 32 and stat.S_IMODE(kept.stat().st_mode) == 0o600
    # Not a terminal: the log says where the token is, never the token.
    assert "data/development-token" in first.log() and token not in first.log()
    assert f"local disk in {tmp_path / 'data' / 'files'}" in first.log()
    first.stop()

    server = development_run()
    assert kept.read_text().strip() == token, "the same token on every run"
    response = httpx.put(
        f"{server.url}/files/first.txt",
        headers={"Authorization": f"Bearer {token}"},
        content=b"hello",
        timeout=WAIT_S,
    )
    assert response.status_code == 200, response.text
    assert response.json()["service"] == "local"
    assert (tmp_path / "data" / "files" / response.json()["handle"] / "first.txt").exists()
    assert httpx.put(f"{server.url}/files/x", content=b"1", timeout=WAIT_S).status_code == 401
    assert token not in server.log()


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


def open_upload(
    server: ServerProcess, method: str, path: str, length: int | None, kind: str = "application/x"
) -> socket.socket:
    """A connection with the request head of an upload sent, and no body yet."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-Auth-Token: {server.env['AUTH_TOKEN']}\r\nContent-Type: {kind}\r\n"
        f"{framing}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.sendall(head)
    return sock


def answer_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body or b"{}")


FORM = "multipart/form-data; boundary=b0undary"


def form_body(data: bytes, name: str = "slow.bin") -> bytes:
    return (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="'
        + name.encode()
        + b'"\r\n\r\n'
        + data
        + b"\r\n--b0undary--\r\n"
    )


def test_slow_but_steady_clients_are_never_cut_off(live_server) -> None:
    # The idle timeout is 1.5 s; the clients never pause that long but take longer than
    # it to fill any buffer: a PUT at 4 KB/s, a POST at 1 KB/s.
    server = live_server(CLIENT_IDLE_TIMEOUT_SECONDS="1.5")
    data = os.urandom(16 * 1024)  # 4 s at 4 KB/s: longer than twice the idle timeout
    for method, path, kind, body, piece, pause in [
        ("PUT", "/files/slow.bin", "application/x", data, 1024, 0.25),
        ("POST", "/upload", FORM, form_body(data[:3000]), 1000, 1.0),
    ]:
        with open_upload(server, method, path, len(body), kind) as sock:
            for start in range(0, len(body), piece):
                sock.sendall(body[start : start + piece])
                time.sleep(pause)
            status, answer = answer_json(read_until_closed(sock))
        assert status == 200, answer
        sent = data if method == "PUT" else data[:3000]
        assert answer["sha256"] == hashlib.sha256(sent).hexdigest()
        assert httpx.get(answer["link"], timeout=WAIT_S).content == sent


def test_a_trickle_below_the_minimum_rate_gets_408_and_frees_its_slot(live_server) -> None:
    server = live_server(
        CLIENT_IDLE_TIMEOUT_SECONDS="1",
        CLIENT_MIN_BYTES_PER_SECOND="1000",
        MAX_CONCURRENT_UPLOADS="1",
        UPLOAD_SLOT_WAIT_SECONDS="0",
    )
    started = time.monotonic()
    with open_upload(server, "PUT", "/files/trickle.bin", None) as sock:
        # Never idle for a second, but a few bytes a second: it would hold its slot for
        # as long as it likes without a minimum rate.
        answer = b""
        for _ in range(40):
            try:
                sock.sendall(b"5\r\nxxxxx\r\n")
            except OSError:
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
        answer += read_until_closed(sock) if answer else b""
    status, body = answer_json(answer)
    assert status == 408, body
    assert "slower than 1000 bytes/s" in body["message"]
    assert time.monotonic() - started < 6
    response = httpx.put(
        f"{server.url}/files/next.txt", headers=token_of(server), content=b"ok", timeout=WAIT_S
    )
    assert response.status_code == 200


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_multipart_junk_of_any_framing_is_capped_and_health_stays_fast(live_server) -> None:
    server = live_server(MAX_UPLOAD_BYTES="1MiB")
    empty_parts = b"--b0undary\r\n\r\n\r\n" * 4096  # 64 KiB of empty parts per send
    valid = form_body(b"tiny")
    junk = {
        "empty parts": (b"", empty_parts),
        "epilogue": (valid, b"e" * 65536),
        "a field": (
            b'--b0undary\r\nContent-Disposition: form-data; name="x"\r\n\r\n',
            b"f" * 65536,
        ),
    }
    for label, (first, repeated) in junk.items():
        latencies = []
        sent = len(first)
        with open_upload(server, "POST", "/upload", None, FORM) as sock:
            if first:
                sock.sendall(chunked(first))
            try:
                while sent < 64 * 1024 * 1024:  # the attack: 64 MiB of junk
                    sock.sendall(chunked(repeated))
                    sent += 65536
                    if sent % (1024 * 1024) < 65536:
                        began = time.monotonic()
                        httpx.get(f"{server.url}/health", timeout=WAIT_S)
                        latencies.append(time.monotonic() - began)
            except OSError:
                pass  # the server answered and closed: what it should do
            status, body = answer_json(read_until_closed(sock))
        assert status == 413, (label, body)
        assert sent <= 8 * 1024 * 1024, (label, sent)  # stopped long before the end
        assert max(latencies, default=0) < 0.5, (label, latencies)
    assert files_under(server.tmp / "files") == []


GUNICORN = [
    sys.executable,
    "-m",
    "gunicorn",
    "server:app",
    "--worker-class",
    "uvicorn_worker.UvicornWorker",
    "--bind",
    "127.0.0.1:{port}",
    "--workers",
    "3",
]


def hold_uploads(server: ServerProcess, count: int) -> list[socket.socket]:
    """``count`` PUTs that have sent half of their body and wait with their slot held."""
    socks = []
    for i in range(count):
        sock = open_upload(server, "PUT", f"/files/held-{i}.bin", 2 * 1024 * 1024)
        sock.sendall(b"h" * 1024 * 1024)
        socks.append(sock)
    return socks


def test_nine_uploads_against_three_workers_of_four_slots_all_succeed(live_server) -> None:
    # 3 workers x 4 slots: MAX_CONCURRENT_UPLOADS counts the whole instance, so however
    # the kernel spreads the connections over the workers, 12 uploads fit.
    server = live_server(GUNICORN, MAX_CONCURRENT_UPLOADS="12", UPLOAD_SLOT_WAIT_SECONDS="0")
    socks = hold_uploads(server, 9)
    files = server.tmp / "files"
    wait_for(lambda: len(files_under(files)) == 9, "nine uploads in progress")
    answers = []
    for sock in socks:
        with sock:
            sock.sendall(b"h" * 1024 * 1024)
            answers.append(answer_json(read_until_closed(sock)))
    assert [status for status, _ in answers] == [200] * 9, answers


def test_the_upload_limit_counts_the_instance_and_waits_briefly_for_a_slot(live_server) -> None:
    server = live_server(GUNICORN, MAX_CONCURRENT_UPLOADS="2", UPLOAD_SLOT_WAIT_SECONDS="1")
    held = hold_uploads(server, 2)
    wait_for(lambda: len(files_under(server.tmp / "files")) == 2, "two uploads in progress")
    # Whichever worker takes it, a third upload finds the instance full.
    began = time.monotonic()
    with open_upload(server, "PUT", "/files/third.bin", 3) as sock:
        sock.sendall(b"333")
        status, body = answer_json(read_until_closed(sock))
    assert status == 503 and body["code"] == "too_many_uploads", body
    assert time.monotonic() - began >= 0.9  # it waited for a slot first
    # One finishes while the next waits: that one gets through.
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            httpx.put,
            f"{server.url}/files/fourth.bin",
            headers=token_of(server),
            content=b"4444",
            timeout=WAIT_S,
        )
        time.sleep(0.3)
        with held[0] as sock:
            sock.sendall(b"h" * 1024 * 1024)
            assert answer_json(read_until_closed(sock))[0] == 200
        assert waiting.result(timeout=WAIT_S).status_code == 200
    held[1].close()


def test_a_nameless_file_part_from_curl_is_stored_under_the_default_name(
    live_server, tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        assert os.environ.get("CI") != "true", "curl is needed in CI"
        pytest.skip("curl is not installed")
    server = live_server()
    source = tmp_path / "screenshot.png"
    source.write_bytes(os.urandom(70_000))
    # `-F "file=<path"` sends the file's content as a field without a file name, as
    # libcurl's curl_mime_data does for uploads from memory.
    done = subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--max-time",
            "30",
            "-H",
            f"X-Auth-Token: {server.env['AUTH_TOKEN']}",
            "-F",
            f"file=<{source}",
            f"{server.url}/upload",
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    answer = json.loads(done.stdout)
    assert answer["filename"] == "upload.bin"
    assert httpx.get(answer["link"], timeout=WAIT_S).content == source.read_bytes()


def test_ready_says_where_local_files_go(live_server) -> None:
    server = live_server()
    line = server.log_line(" ready: ")
    assert f"storage=local in {server.tmp / 'files'}," in line


def test_ready_is_not_logged_before_storage_is_connected(live_server) -> None:
    server = live_server(**MEGA_OUT_OF_REACH, PUBLIC_BASE_URL=None, MEGA_RETRY_ATTEMPTS="1")
    server.log_line("storage not reachable yet")
    assert " ready" not in server.log()
    assert httpx.get(f"{server.url}/ready", timeout=WAIT_S).status_code == 503


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_refused_put_logs_the_name_of_the_file(live_server, log_format: str) -> None:
    server = live_server(LOG_FORMAT=log_format)
    refused = httpx.put(
        f"{server.url}/files/quarterly%20report.pdf",
        headers={"X-Auth-Token": "not-the-token-of-anyone"},
        content=b"x",
        timeout=WAIT_S,
    )
    assert refused.status_code == 403
    line = server.log_line("upload invalid_token")
    if log_format == "json":
        assert json.loads(line)["upload"]["name"] == "quarterly report.pdf"
        line = json.loads(line)["message"]
    assert 'upload invalid_token: "quarterly report.pdf"' in line


def test_head_on_a_download_link_answers_like_get_without_a_body(live_server) -> None:
    server = live_server()
    data = os.urandom(5000)
    with httpx.Client(timeout=WAIT_S) as http:
        link = http.put(
            f"{server.url}/files/photo.jpg", headers=token_of(server), content=data
        ).json()["link"]
        got = http.get(link)
        head = http.head(link)
        missing = http.head(f"{server.url}/files/{'A' * 22}/photo.jpg")
    assert head.status_code == 200 and head.content == b""
    for name in ["content-length", "content-type", "content-disposition", "etag"]:
        assert head.headers[name] == got.headers[name], name
    assert int(head.headers["content-length"]) == len(data) == len(got.content)
    assert missing.status_code == 404


def test_development_run_shows_its_token_on_a_terminal(tmp_path: Path) -> None:
    env = service_env(tmp_path, free_port(), {"AUTH_TOKEN": None, "STORAGE_BACKEND": None})
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py")],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    try:
        deadline = time.monotonic() + WAIT_S
        while b"AUTH_TOKEN is not set" not in shown or not shown.endswith(b"\n"):
            assert time.monotonic() < deadline, shown
            if select.select([controller], [], [], 0.2)[0]:
                shown += os.read(controller, 4096)
    finally:
        process.terminate()
        process.wait(timeout=WAIT_S)
        os.close(controller)
    token = (tmp_path / "data" / "development-token").read_text().strip()
    assert f"data/development-token (mode 0600, the same on every run): {token}" in shown.decode()


def test_a_service_stops_promptly_while_mega_is_out_of_reach(live_server) -> None:
    """A deploy or a scale-down is not held up by a MEGA log-in that cannot succeed: the
    background work (log-in, index, space) is left to end in its threads."""
    server = live_server(**MEGA_OUT_OF_REACH)
    time.sleep(2)  # the log-in and the index build are under way, retrying
    started = time.monotonic()
    server.process.terminate()
    server.process.wait(timeout=30)
    assert time.monotonic() - started < 8, server.log()
    assert "Application shutdown complete" in server.log()
