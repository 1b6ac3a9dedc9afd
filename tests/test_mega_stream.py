"""Streaming PUT into MEGA, and the upload pipeline, through a real server process.

``PUT /files/<name>`` with a Content-Length hands the body to ``MegaBackend.store_stream``
while it arrives; every upload is checked by downloading it through its link, decrypting
it and checking its MAC (``tests.mega_verify``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.storage.base import UpstreamRejected
from app.storage.mega.client import MegaClient
from app.storage.mega.errors import StreamCannotRestart, to_storage_error
from app.storage.mega.retry import RetryPolicy
from app.storage.mega.upload import (
    SourceFailed,
    UploadLimits,
    export_link,
    put_file_node,
    send_stream,
)
from tests.conftest import EmulatorOptions
from tests.mega_emulator import MegaEmulator
from tests.mega_verify import fingerprint_of, verify
from tests.support.mega_service import (
    EMAIL,
    PASSWORD,
    QUICK_WAITS,
    Service,
    check_stored,
    payload,
    start_service,
)

KiB, MiB = 1024, 1024 * 1024
PIPELINE = {"MEGA_UPLOAD_REGION_BYTES": "1MiB", "MEGA_UPLOAD_PARALLEL": "3"}
# One emulator and one service for the module's tests; faults and counters are reset.
MEGA_EMULATOR = EmulatorOptions(seed=31, accounts=((EMAIL, PASSWORD),), fresh_per_test=False)


@pytest.fixture(scope="module")
def service(emulator: MegaEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Small regions, so that a few MiB already make a pipeline of several regions.
    running = start_service(tmp_path_factory.mktemp("stream-server"), emulator, **PIPELINE)
    yield running
    running.close()


def put(service: Service, name: str, data: bytes) -> httpx.Response:
    # httpx sends bytes content with a Content-Length: the streaming path.
    return service.http.put(
        f"{service.url}/files/{name}",
        params={"service": "mega"},
        headers=service.headers,
        content=data,
    )


@pytest.mark.parametrize("size", [0, 1, 17, 128 * KiB + 1, MiB + 5, 10 * MiB + 3])
def test_streamed_put_of_each_size_is_stored_intact(
    service: Service, emulator: MegaEmulator, size: int
) -> None:
    data = payload(size, size + 7)
    name = f"stream {size}.bin"
    check_stored(emulator, put(service, name, data), name, data)
    assert emulator.stats()["files_stored"] == 1
    assert service.leftovers() == []  # the replay copy is gone with the upload


def test_a_streamed_upload_carries_megas_fingerprint(
    service: Service, emulator: MegaEmulator
) -> None:
    # Taken while the body streams past (size known, bytes in order), not read twice.
    data = payload(3 * MiB + 333, 12)
    before = int(time.time())
    response = put(service, "fingerprinted.bin", data)
    check_stored(emulator, response, "fingerprinted.bin", data)
    found = emulator.sdk_fingerprint(response.json()["handle"])
    assert found is not None
    crc, mtime = found
    assert crc == fingerprint_of(data) and before <= mtime <= int(time.time())


def test_the_files_own_date_from_x_file_mtime_reaches_megas_fingerprint(
    service: Service, emulator: MegaEmulator
) -> None:
    data = payload(MiB + 7, 13)
    dated = {**service.headers, "X-File-Mtime": "1234567890"}
    streamed = service.http.put(f"{service.url}/files/dated.bin", headers=dated, content=data)
    check_stored(emulator, streamed, "dated.bin", data)
    assert emulator.sdk_fingerprint(streamed.json()["handle"]) == (fingerprint_of(data), 1234567890)
    other = payload(MiB + 7, 14)  # bytes of its own: the same bytes share one file
    form = service.http.post(
        f"{service.url}/upload", headers=dated, files={"file": ("form.bin", other)}
    )
    check_stored(emulator, form, "form.bin", other)
    assert emulator.sdk_fingerprint(form.json()["handle"]) == (fingerprint_of(other), 1234567890)
    wrong = service.http.put(
        f"{service.url}/files/x.bin",
        headers={**service.headers, "X-File-Mtime": "yesterday"},
        content=b"x",
    )
    assert wrong.status_code == 422 and "x-file-mtime" in wrong.json()["message"]


@pytest.mark.parametrize(
    "fault",
    [
        {"chunk_http500_next": 2, "chunk_http500_probability": 0.2},
        {"chunk_http503_next": 2, "chunk_http503_probability": 0.2},
        {"chunk_drop_next": 1, "chunk_drop_probability": 0.1},
    ],
    ids=["http500", "http503", "drop"],
)
def test_streamed_put_survives_chunk_faults(
    service: Service, emulator: MegaEmulator, fault: dict[str, Any]
) -> None:
    emulator.faults.update(**fault)
    data = payload(5 * MiB + 11, 3)
    response = put(service, "faulty.bin", data)
    emulator.faults.reset()
    check_stored(emulator, response, "faulty.bin", data)
    stats = emulator.stats()
    assert stats["faults_injected"], "the fault never fired"
    assert stats["commands"]["u"] == 1  # resent region by region, never restarted


BOUNDARY = "------------------------paimonStreamTest"


def form(data: bytes, name: str, before: bytes = b"", after: bytes = b"") -> bytes:
    """A multipart body as curl and libcurl build it; ``after`` goes after the file part."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return before + head + data + b"\r\n" + after + f"--{BOUNDARY}--\r\n".encode()


def field(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    ).encode()


def request_head(service: Service, method: str, name: str, length: int) -> bytes:
    target = "/upload" if method == "POST" else f"/files/{name}"
    kind = f"multipart/form-data; boundary={BOUNDARY}" if method == "POST" else "application/x"
    host = service.url.removeprefix("http://")
    return (
        f"{method} {target}?service=mega HTTP/1.1\r\nHost: {host}\r\n"
        f"X-Auth-Token: {service.headers['X-Auth-Token']}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def body_for(method: str, name: str, data: bytes) -> bytes:
    return form(data, name) if method == "POST" else data


def connect(service: Service) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    # A small send buffer, so that what the client has sent is close to what the
    # server has taken (as on a real network, where the buffers sit behind a slow link).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
    return sock


def answer_of(sock: socket.socket) -> httpx.Response:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("method", ["PUT", "POST"])
@pytest.mark.parametrize(
    "fault",
    [{"chunk_error_next": 1, "chunk_error_code": -4}, {"chunk_http403_next": 1}],
    ids=["answer-4", "http403"],
)
def test_a_streamed_upload_restarts_on_a_fresh_url_in_the_middle_of_the_body(
    service: Service, emulator: MegaEmulator, fault: dict[str, Any], method: str
) -> None:
    # Bytes of its own: the same bytes again would join the file stored before.
    data = payload(6 * MiB + 123, f"restart-{method}-{fault}")
    body = body_for(method, "restart.bin", data)
    with connect(service) as sock:
        sock.sendall(request_head(service, method, "restart.bin", len(body)) + body[: 3 * MiB])
        # MEGA has taken some regions of this upload URL when it declares the URL dead.
        wait_for(lambda: emulator.stats()["chunk_posts"] >= 2, "the first regions")
        emulator.faults.update(**fault)
        sock.sendall(body[3 * MiB :])
        response = answer_of(sock)
    check_stored(emulator, response, "restart.bin", data)
    stats = emulator.stats()
    assert stats["faults_injected"], "the fault never fired"
    assert stats["commands"]["u"] == 2  # a fresh URL, the client asked for nothing
    assert stats["files_stored"] == 1
    assert service.leftovers() == []


def test_a_multipart_post_is_relayed_while_it_arrives_and_progress_tracks_mega(
    new_stream_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    """libcurl's way: progress is what was sent; MEGA must be close behind it."""
    service = new_stream_service()
    check_stored(emulator, put(service, "warm.bin", b"w"), "warm.bin", b"w")  # log-in, folder
    emulator.reset_stats()
    emulator.faults.chunk_delay = 0.03  # MEGA slower than the client
    data = payload(40 * MiB + 77, 12)
    body = form(data, "progress.bin")
    behind: list[int] = []
    with connect(service) as sock:
        sock.sendall(request_head(service, "POST", "progress.bin", len(body)))
        for start in range(0, len(body), 256 * KiB):
            sock.sendall(body[start : start + 256 * KiB])
            behind.append(start - emulator.stats()["chunk_bytes"])
        last_byte = time.monotonic()
        at_last_byte = len(data) - emulator.stats()["chunk_bytes"]
        response = answer_of(sock)
        answer_after = time.monotonic() - last_byte
    check_stored(emulator, response, "progress.bin", data)
    # What the client believes is sent is never far ahead of what MEGA holds: the relay
    # queue, the regions in flight and the socket buffers.
    window = 20 * MiB
    assert max(behind) <= window, max(behind) / MiB
    assert at_last_byte <= window, at_last_byte / MiB
    assert answer_after < 30
    assert emulator.stats()["commands"]["u"] == 1
    assert service.leftovers() == []


@pytest.mark.parametrize(
    ("before", "after", "epilogue"),
    [
        (b"", field("note", "a field after the file"), b""),
        (field("first", "a field before"), field("second", "x" * 5000), b""),
        (b"", b"", b"\r\nan epilogue after the closing boundary\r\n"),
    ],
    ids=["field-after", "fields-around", "epilogue"],
)
def test_a_body_that_does_not_fit_the_prediction_is_stored_with_the_right_bytes(
    service: Service, emulator: MegaEmulator, before: bytes, after: bytes, epilogue: bytes
) -> None:
    data = payload(3 * MiB + 5, repr((before, after, epilogue)))
    body = form(data, "odd.bin", before, after) + epilogue
    with connect(service) as sock:
        sock.sendall(request_head(service, "POST", "odd.bin", len(body)) + body)
        response = answer_of(sock)
    check_stored(emulator, response, "odd.bin", data)
    assert response.json()["size"] == len(data)
    assert emulator.stats()["files_stored"] == 1  # whatever was streamed was abandoned
    assert service.leftovers() == []


def copy_sizes(service: Service) -> list[int]:
    return [path.stat().st_size for path in service.spool.iterdir()]


def test_a_client_that_gives_up_before_its_answer_leaves_nothing_in_mega(
    new_stream_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    # One slot and no waiting for one: the probe gets through once the upload has ended.
    service = new_stream_service(
        MAX_CONCURRENT_UPLOADS="1",
        UPLOAD_SLOT_WAIT_SECONDS="0",
    )
    check_stored(emulator, put(service, "warm.bin", b"w"), "warm.bin", b"w")
    files_before = emulator.stats()["stored_files"]
    emulator.faults.chunk_delay = 0.3  # the last regions, p and l still to come
    data = payload(4 * MiB, 14)
    body = form(data, "given-up.bin")
    with connect(service) as sock:
        sock.sendall(request_head(service, "POST", "given-up.bin", len(body)) + body)
        # The whole body has arrived (its replay copy is complete); MEGA is still busy.
        wait_for(lambda: copy_sizes(service) == [len(data)], "the whole body")
        time.sleep(0.05)
    # The client is gone (a libcurl low-speed limit, a user pressing cancel).
    emulator.faults.reset()
    wait_for(lambda: put(service, "probe.bin", b"p").status_code != 503, "the upload to end")
    assert emulator.stats()["stored_files"] == files_before + 1  # the probe only
    assert service.server.log().count("client left before its answer") == 1, service.server.log()
    assert service.leftovers() == []


def curl_upload(service: Service, source: Path, *options: str) -> subprocess.CompletedProcess:
    curl = shutil.which("curl")
    if curl is None:
        assert os.environ.get("CI") != "true", "curl is needed in CI"
        pytest.skip("curl is not installed")
    return subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--max-time",
            "60",
            "-H",
            f"X-Auth-Token: {service.headers['X-Auth-Token']}",
            "-H",
            "Expect: 100-continue",  # libcurl's default for big bodies, said out loud
            *options,
            "-F",
            f"file=@{source}",
            f"{service.url}/upload?service=mega",
        ],
        capture_output=True,
        timeout=90,
    )


def test_curl_multipart_with_expect_100_continue_streams_into_mega(
    service: Service, emulator: MegaEmulator, tmp_path: Path
) -> None:
    data = payload(5 * MiB + 9, 15)
    source = tmp_path / "game save.bin"
    source.write_bytes(data)
    done = curl_upload(service, source)
    assert done.returncode == 0, done.stderr + done.stdout
    check_stored(emulator, httpx.Response(200, content=done.stdout), "game save.bin", data)
    assert emulator.stats()["commands"]["u"] == 1  # streamed: the prediction held
    assert service.leftovers() == []


def test_curl_giving_up_on_a_low_speed_limit_leaves_nothing_stored(
    new_stream_service: Callable[..., Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    service = new_stream_service(MAX_CONCURRENT_UPLOADS="1", UPLOAD_SLOT_WAIT_SECONDS="0")
    check_stored(emulator, put(service, "warm.bin", b"w"), "warm.bin", b"w")
    files_before = emulator.stats()["stored_files"]
    source = tmp_path / "slow.bin"
    source.write_bytes(payload(40 * MiB, 16))
    # MEGA crawls; the client's progress crawls with it and libcurl's low-speed limit
    # (CURLOPT_LOW_SPEED_LIMIT / _TIME) gives up.
    emulator.faults.chunk_delay = 2.0  # 1.5 MB/s with 3 regions of 1 MiB in flight
    done = curl_upload(service, source, "--speed-limit", "5000000", "--speed-time", "2")
    assert done.returncode == 28, done.stderr  # curl: operation too slow
    emulator.faults.reset()
    wait_for(lambda: put(service, "probe.bin", b"p").status_code != 503, "the upload to end")
    assert emulator.stats()["stored_files"] == files_before + 1  # the probe only
    assert service.leftovers() == []


def test_a_client_leaving_mid_put_leaves_nothing_behind(
    new_stream_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    # One upload slot: the next upload can only start once the abandoned one has ended.
    service = new_stream_service(MAX_CONCURRENT_UPLOADS="1")
    check_stored(emulator, put(service, "warm.bin", b"w"), "warm.bin", b"w")  # log-in, folder
    emulator.reset_stats()
    size, sent = 8 * MiB, 3 * MiB + 5
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"PUT /files/gone.bin?service=mega HTTP/1.1\r\nHost: {host}\r\n"
            f"X-Auth-Token: {service.headers['X-Auth-Token']}\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode() + payload(sent, 5))
        # Let the server start the upload (u, the first regions) before leaving.
        deadline = time.monotonic() + 10
        while emulator.stats()["chunk_posts"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert emulator.stats()["chunk_posts"] >= 2
    assert service.health() == 200
    data = payload(2 * MiB + 1, 6)
    deadline = time.monotonic() + 15
    while (response := put(service, "after.bin", data)).status_code == 503:
        assert time.monotonic() < deadline, "the abandoned upload never ended"
        time.sleep(0.1)
    check_stored(emulator, response, "after.bin", data)
    stats = emulator.stats()
    assert stats["files_stored"] == 1 and stats["commands"]["p"] == 1  # only "after.bin"
    assert service.leftovers() == []


def test_a_slow_client_is_not_held_against_the_mega_deadline(
    new_stream_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    # The MEGA deadline bounds MEGA's work: a client sending steadily for twice as long
    # still gets its link, while MEGA being slow still ends in 504 at the deadline.
    deadline = 2.0
    service = new_stream_service(
        MEGA_UPLOAD_DEADLINE_SECONDS=str(deadline), MEGA_READ_TIMEOUT="0.4"
    )
    check_stored(emulator, put(service, "warm.bin", b"w"), "warm.bin", b"w")  # log-in, folder
    data = payload(24 * KiB + 7, 17)
    piece, pause = 1536, 0.25  # 6 KB/s: about 4 s for the file
    for method in ("PUT", "POST"):
        body = body_for(method, "steady.bin", data)
        started = time.monotonic()
        with connect(service) as sock:
            sock.sendall(request_head(service, method, "steady.bin", len(body)))
            for start in range(0, len(body), piece):
                sock.sendall(body[start : start + piece])
                time.sleep(pause)
            response = answer_of(sock)
        assert time.monotonic() - started > 1.5 * deadline  # the client took longer
        check_stored(emulator, response, "steady.bin", data)

    slow = 1.0
    emulator.faults.chunk_delay = slow  # MEGA slower than its read timeout, every time
    started = time.monotonic()
    response = put(service, "slow-mega.bin", data)
    elapsed = time.monotonic() - started
    emulator.faults.reset()
    # The POSTs the service gave up on are still asleep in the emulator: let them end, so
    # that the next test counts only its own.
    time.sleep(slow + 0.5)
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "storage_timeout"
    assert elapsed < deadline * 3, elapsed
    assert service.leftovers() == []


def test_the_pipeline_overlaps_regions_and_never_exceeds_the_setting(
    service: Service, emulator: MegaEmulator
) -> None:
    # A little delay per chunk POST makes the overlap visible; 10 regions of 1 MiB.
    emulator.faults.chunk_delay = 0.05
    data = payload(10 * MiB, 8)
    response = put(service, "pipelined.bin", data)
    emulator.faults.reset()
    check_stored(emulator, response, "pipelined.bin", data)
    peak = emulator.stats()["max_concurrent_chunk_posts"]
    assert 2 <= peak <= 3, peak


def test_one_region_at_a_time_when_parallel_is_1(
    new_stream_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    service = new_stream_service(MEGA_UPLOAD_PARALLEL="1")
    emulator.faults.chunk_delay = 0.05
    data = payload(4 * MiB + 3, 9)
    for method in (put, Service.upload):  # streamed and spooled share the pipeline
        emulator.reset_stats()
        check_stored(emulator, method(service, "serial.bin", data), "serial.bin", data)
        assert emulator.stats()["max_concurrent_chunk_posts"] == 1
    emulator.faults.reset()


@pytest.fixture
def new_stream_service(
    emulator: MegaEmulator, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []
    # A folder per test: files another test stored (the same warm-up bytes) would be
    # joined instead of stored again.
    folder = f"Stream/{request.node.name[:60]}"

    def start(argv: list[str] | None = None, **env: str) -> Service:
        running = start_service(
            tmp_path / f"server-{len(started)}",
            emulator,
            argv,
            **{**PIPELINE, "MEGA_FOLDER": folder, **env},
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


# -- the data path's streaming contract, without the HTTP layer --------------------------

FAST = RetryPolicy(attempts=6, deadline_s=20, initial_s=0.01, max_s=0.05, waits=QUICK_WAITS)


@pytest.fixture
def client(emulator: MegaEmulator, tmp_path: Path) -> Iterator[MegaClient]:
    mega = MegaClient(emulator.url, EMAIL, PASSWORD, tmp_path / "session.json", policy=FAST)
    mega.ensure_login()
    yield mega
    mega.close()


class Body:
    """A body that gives ``data`` in pieces, then raises ``error`` instead of the rest."""

    def __init__(self, data: bytes, error: Exception | None = None) -> None:
        self.data, self.error, self.position = data, error, 0

    def read(self, size: int) -> bytes:
        if self.position >= len(self.data) and self.error is not None:
            raise self.error
        piece = self.data[self.position : self.position + min(size, 300 * KiB)]
        self.position += len(piece)
        return piece

    def rewind(self) -> bool:
        return False  # no copy of itself to start again from


def test_what_body_read_raises_comes_back_unchanged(
    client: MegaClient, emulator: MegaEmulator
) -> None:
    gone = ConnectionAbortedError("client left")
    limits = UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    with pytest.raises(SourceFailed) as caught:
        send_stream(client, Body(payload(2 * MiB, 1), gone), 5 * MiB, limits)
    assert caught.value.error is gone
    assert emulator.stats()["commands"].get("p", 0) == 0


def test_a_stream_without_a_copy_is_never_restarted(
    client: MegaClient, emulator: MegaEmulator
) -> None:
    emulator.faults.chunk_http403_next = 1
    limits = UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    with pytest.raises(StreamCannotRestart) as caught:
        send_stream(client, Body(payload(3 * MiB, 2)), 3 * MiB, limits)
    failure = to_storage_error(caught.value)
    assert isinstance(failure, UpstreamRejected) and "send the file again" in str(failure)
    assert emulator.stats()["commands"]["u"] == 1


def test_a_stream_short_of_its_size_fails(client: MegaClient, emulator: MegaEmulator) -> None:
    data = payload(MiB, 3)
    with pytest.raises(SourceFailed):
        send_stream(client, Body(data), MiB + 1, UploadLimits(chunk_policy=FAST))


def test_a_small_streamed_file_verifies(client: MegaClient, emulator: MegaEmulator) -> None:
    data = payload(3 * MiB + 17, 4)
    sent = send_stream(
        client, Body(data), len(data), UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    )
    root = next(n["h"] for n in client.api({"a": "f", "c": 1})["f"] if n["t"] == 2)
    link = export_link(client, put_file_node(client, root, sent, "s.bin").handle, sent.node_key)
    verify(emulator.url, link, data, name="s.bin")
