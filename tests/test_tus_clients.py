"""tus uploads into MEGA (the emulator) with tus clients this project did not write:
tuspy (PyPI) and tus-js-client under Node, against real server processes.

Every upload is checked by downloading it through its link, decrypting it and checking
its MAC (``tests.mega_verify``). Connections are cut mid-PATCH by a proxy in between
(``tests.support.cutting_proxy``), the way a dropped network cuts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

from tests.conftest import ROOT, EmulatorOptions, RedisServer
from tests.mega_emulator import MegaEmulator
from tests.mega_verify import verify
from tests.support.cutting_proxy import CuttingProxy
from tests.support.folder_watch import FolderWatch
from tests.test_mega_e2e import EMAIL, PASSWORD, Service, start_service, wait_ready

MiB = 1024 * 1024
PIECE = 5 * MiB
HTTP_TIMEOUT_S = 60
RUN_TIMEOUT_S = 180
WAIT_S = 20.0
TUS_JS = ROOT / "tests" / "tus_js"
NODE = shutil.which("node")
# One emulator for the module; faults and counters are reset between tests.
MEGA_EMULATOR = EmulatorOptions(seed=19, accounts=((EMAIL, PASSWORD),), fresh_per_test=False)


@pytest.fixture(autouse=True)
def bounded_sockets() -> Iterator[None]:
    """tuspy's requests carry no timeout of their own: no test may wait without a limit."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(HTTP_TIMEOUT_S)
    yield
    socket.setdefaulttimeout(previous)


@pytest.fixture
def services(emulator: MegaEmulator, tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.close()


def start(services: list[Service], emulator: MegaEmulator, base: Path, **env: str) -> Service:
    service = start_service(base, emulator, **env)
    services.append(service)
    return service


def start_watched(
    services: list[Service], emulator: MegaEmulator, tmp_path: Path, **env: str
) -> tuple[Service, Path]:
    """A service whose temporary directories (TMPDIR, TEMP_UPLOAD_DIR) are one folder the
    test watches: file bytes never go there."""
    watched = tmp_path / "tmp"
    watched.mkdir()
    service = start(
        services,
        emulator,
        tmp_path / "server",
        TMPDIR=str(watched),
        TEMP_UPLOAD_DIR=str(watched / "spool"),
        **env,
    )
    return service, watched


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def tus_headers(service: Service) -> dict[str, str]:
    return {**service.headers, "Tus-Resumable": "1.0.0"}


def answer_of(service: Service, url: str) -> dict:
    path = urlsplit(url).path
    response = service.http.get(f"{service.url}{path}", headers=tus_headers(service))
    assert response.status_code == 200, response.text
    return response.json()


def check_file(emulator: MegaEmulator, answer: dict, data: bytes, name: str) -> None:
    assert (answer["size"], answer["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    verify(emulator.url, answer["link"], data, name=name)


def files_in(emulator: MegaEmulator) -> int:
    return sum(1 for node in emulator.nodes(EMAIL) if node["t"] == 0)


def run_tus_js(options: dict) -> tuple[int, dict]:
    """tus-js-client under Node (tests/tus_js/upload.mjs): (exit code, its JSON line)."""
    result = subprocess.run(
        [str(NODE), str(TUS_JS / "upload.mjs"), json.dumps(options)],
        cwd=TUS_JS,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return result.returncode, json.loads(lines[-1])


@pytest.fixture
def tus_js() -> None:
    """tus-js-client installed with ``npm ci`` in tests/tus_js; skipped where missing,
    except in CI."""
    if NODE is None or not (TUS_JS / "node_modules" / "tus-js-client").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs node and tests/tus_js/node_modules (.ci/run runs npm ci)")
        pytest.skip("node or tus-js-client missing (cd tests/tus_js && npm ci)")


# -- interrupted and resumed -------------------------------------------------------------


def test_tuspy_resumes_64_mib_cut_mid_patch_and_no_temp_file_is_written(
    services: list[Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    service, watched = start_watched(services, emulator, tmp_path)
    assert wait_ready(service) == 200
    data = payload(64 * MiB, 64)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    urls = FileStorage(str(tmp_path / "tuspy-urls.json"))

    with (
        FolderWatch(watched, service.server.process.pid) as watch,
        CuttingProxy(service.server.port) as proxy,
    ):
        client = TusClient(f"{proxy.url}/tus/", headers=service.headers)

        def uploader() -> Uploader:
            return client.uploader(
                str(path),
                chunk_size=PIECE,
                metadata={"filename": "big.bin"},
                store_url=True,
                url_storage=urls,
            )

        first = uploader()
        proxy.cut_after(23 * MiB)  # inside the fifth PATCH
        with pytest.raises(TusCommunicationError):
            first.upload()
        assert proxy.cuts == 1
        stored = first.offset  # what the service had acknowledged before the cut

        second = uploader()  # a new run: the URL from storage, the offset from HEAD
        assert second.url == first.url
        assert second.offset >= stored > 0
        second.upload()

    check_file(emulator, answer_of(service, second.url), data, "big.bin")
    assert watch.seen == []
    assert not any(watched.rglob("*.*"))


def test_tus_js_client_resumes_64_mib_cut_mid_patch(
    tus_js: None, services: list[Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    service = start(services, emulator, tmp_path / "server")
    assert wait_ready(service) == 200
    data = payload(64 * MiB, 65)
    path = tmp_path / "from-node.bin"
    path.write_bytes(data)

    with CuttingProxy(service.server.port) as proxy:
        options = {
            "endpoint": f"{proxy.url}/tus/",
            "file": str(path),
            "token": service.headers["X-Auth-Token"],
            "chunkSize": PIECE,
            "urlStorage": str(tmp_path / "tus-js-urls.json"),
            "metadata": {"filename": "from-node.bin"},
        }
        proxy.cut_after(33 * MiB)
        code, cut = run_tus_js(options)
        assert (code, cut["status"], proxy.cuts) == (1, 0, 1), cut
        code, done = run_tus_js(options)  # run again: it finds the upload and goes on

    assert code == 0, done
    assert done["url"] == cut["url"]
    answer = answer_of(service, done["url"])
    assert done["link"] == answer["link"]
    check_file(emulator, answer, data, "from-node.bin")
    # Resumed, not started again: well under the first 33 MiB plus the whole file.
    assert proxy.sent_up < 64 * MiB + 33 * MiB - 20 * MiB, proxy.sent_up


# -- any instance, any time ----------------------------------------------------------------


def test_pieces_alternate_between_two_instances_and_survive_a_restart_with_one_login(
    services: list[Service], emulator: MegaEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = {"REDIS_URL": redis_server.url, "AUTH_TOKEN": "tus-two-instances-" + "k" * 16}
    first = start(services, emulator, tmp_path / "a", **shared)
    assert wait_ready(first) == 200  # its log-in is in Redis before the second starts
    second = start(services, emulator, tmp_path / "b", **shared)
    assert wait_ready(second) == 200
    data = payload(24 * MiB + 321, 24)
    path = tmp_path / "shared.bin"
    path.write_bytes(data)

    def uploader(service: Service, url: str | None = None) -> Uploader:
        client = TusClient(f"{service.url}/tus/", headers=service.headers)
        return client.uploader(
            str(path), url=url, chunk_size=PIECE, metadata={"filename": "shared.bin"}
        )

    opened = uploader(first)
    opened.upload_chunk()  # creates the upload on the first instance, and its first piece
    upload_path = urlsplit(opened.url).path
    pieces, instance = 1, 1
    while True:
        if pieces == 3:
            # The first instance goes away mid-upload and comes back (a deploy).
            first.close()
            services.remove(first)
            first = start(services, emulator, tmp_path / "a", **shared)
        target = (first, second)[instance % 2]
        step = uploader(target, f"{target.url}{upload_path}")  # HEAD: where it stands
        if step.offset == len(data):
            break
        step.upload_chunk()
        pieces, instance = pieces + 1, instance + 1

    assert pieces >= 5
    check_file(emulator, answer_of(second, upload_path), data, "shared.bin")
    # The same answer from either instance (the delete URL on each one's own address).
    answers = [answer_of(service, upload_path) for service in (first, second)]
    paths = [urlsplit(answer.pop("delete_url")).path for answer in answers]
    assert answers[0] == answers[1] and paths[0] == paths[1]
    assert emulator.stats()["logins_ok"] == 1


def test_concurrent_patches_are_refused_across_instances(
    services: list[Service], emulator: MegaEmulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = {"REDIS_URL": redis_server.url, "AUTH_TOKEN": "tus-concurrent-" + "c" * 16}
    first = start(services, emulator, tmp_path / "a", **shared)
    assert wait_ready(first) == 200
    second = start(services, emulator, tmp_path / "b", **shared)
    data = payload(12 * MiB, 12)
    path = tmp_path / "contested.bin"
    path.write_bytes(data)
    client = TusClient(f"{second.url}/tus/", headers=second.headers)
    contender = client.uploader(str(path), chunk_size=PIECE, metadata={"filename": "contested.bin"})
    contender.set_url(contender.create_url())
    upload_path = urlsplit(contender.url).path

    # A PATCH on the first instance that sends 4 MiB of its 8 and then waits: by the time
    # MEGA has a region of it, it surely holds the upload.
    head = (
        f"PATCH {upload_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"X-Auth-Token: {shared['AUTH_TOKEN']}\r\nUpload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {8 * MiB}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", first.server.port), timeout=WAIT_S) as held:
        held.sendall(head + data[: 4 * MiB])
        deadline = time.monotonic() + WAIT_S
        while not emulator.stats().get("chunk_posts") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert emulator.stats().get("chunk_posts"), "the held PATCH never reached MEGA"

        with pytest.raises(TusCommunicationError) as refused:
            contender.upload_chunk()
        assert refused.value.status_code == 423

    # The held connection is gone: its PATCH ends (keeping the region MEGA took), and the
    # upload goes on from where it is (asked again while that PATCH was winding down).
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            resumed = client.uploader(str(path), url=contender.url, chunk_size=PIECE)
            resumed.upload()
            break
        except TusCommunicationError as busy:
            assert busy.status_code in (409, 423) and time.monotonic() < deadline
            time.sleep(0.2)
    check_file(emulator, answer_of(second, upload_path), data, "contested.bin")


HOLDER = """
import sys, time
import app.intake.resumable_state as states
from app.shared_state import RedisState
states.LOCK_HOLD_S, states.RENEW_EVERY_S = 1.0, 0.2
store = {store}
store.hold(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_an_upload_held_by_a_process_that_dies_is_free_again(
    kind: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    from app.intake.errors import UploadBusy
    from app.intake.resumable_state import FileUploadStates, RedisUploadStates
    from app.shared_state import RedisState

    upload_id = "H" * 22
    if kind == "redis":
        store_code = f"states.RedisUploadStates(RedisState({redis_server.url!r}))"
        store = RedisUploadStates(RedisState(redis_server.url))
    else:
        folder = tmp_path / "tus-state"
        store = FileUploadStates(folder)
        store.save(upload_id, b"{}", time.time() + 60)
        store_code = f"states.FileUploadStates(__import__('pathlib').Path({str(folder)!r}))"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(store=store_code), upload_id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        time.sleep(1.5)  # longer than the hold: a living holder keeps it by renewing
        with pytest.raises(UploadBusy):
            store.hold(upload_id)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                store.hold(upload_id).release()
                break
            except UploadBusy:
                assert time.monotonic() < deadline, "the dead holder's lock never expired"
                time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait(timeout=10)


# -- pieces that do not go in ----------------------------------------------------------------


_FLIP = [True]  # the next checksum is wrong while this holds a True


def _sha1_flipped_once(data: bytes) -> object:
    if _FLIP and _FLIP.pop():
        return hashlib.sha1(data + b"flipped")
    return hashlib.sha1(data)


class _WrongChecksumOnce(Uploader):
    """tuspy, sending a wrong sha1 with its first piece (as a flipped bit on the way would)."""

    CHECKSUM_ALGORITHM_PAIR = ("sha1", _sha1_flipped_once)


def test_a_checksum_mismatch_is_460_reaches_no_mega_and_a_good_resend_continues(
    services: list[Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    service = start(services, emulator, tmp_path / "server")
    assert wait_ready(service) == 200
    data = payload(12 * MiB + 5, 7)
    path = tmp_path / "checked.bin"
    path.write_bytes(data)
    client = TusClient(f"{service.url}/tus/", headers=service.headers)
    bad = _WrongChecksumOnce(
        str(path), client=client, chunk_size=PIECE, upload_checksum=True,
        metadata={"filename": "checked.bin"},
    )  # fmt: skip
    bad.set_url(bad.create_url())
    emulator.reset_stats()

    with pytest.raises(TusCommunicationError) as mismatch:
        bad.upload_chunk()

    assert mismatch.value.status_code == 460
    assert emulator.stats().get("chunk_posts", 0) == 0  # nothing of it went to MEGA
    good = client.uploader(str(path), url=bad.url, chunk_size=PIECE, upload_checksum=True)
    assert good.offset == 0
    good.upload()
    check_file(emulator, answer_of(service, good.url), data, "checked.bin")


def test_an_upload_url_mega_kills_mid_way_starts_again_at_0_and_ends_correct(
    services: list[Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    service = start(services, emulator, tmp_path / "server")
    assert wait_ready(service) == 200
    data = payload(16 * MiB, 16)
    path = tmp_path / "restarted.bin"
    path.write_bytes(data)
    client = TusClient(f"{service.url}/tus/", headers=service.headers)
    uploader = client.uploader(str(path), chunk_size=PIECE, metadata={"filename": "r.bin"})
    offsets = []
    while uploader.offset < len(data):
        if len(offsets) == 2:
            emulator.faults.chunk_http403_next = 1  # MEGA: this upload URL has expired
        uploader.upload_chunk()
        offsets.append(uploader.offset)

    assert 0 in offsets[2:], offsets  # the service said "from 0 again", and tuspy did
    assert emulator.stats()["faults_injected"]
    check_file(emulator, answer_of(service, uploader.url), data, "r.bin")


# -- ending ------------------------------------------------------------------------------------


def test_termination_and_expiry_leave_no_node_no_state_and_no_temp_file(
    tus_js: None,
    services: list[Service],
    emulator: MegaEmulator,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    service, watched = start_watched(
        services, emulator, tmp_path, REDIS_URL=redis_server.url, TUS_EXPIRY_SECONDS="3"
    )
    assert wait_ready(service) == 200
    files_before = files_in(emulator)
    keys = redis.Redis.from_url(redis_server.url)
    data = payload(20 * MiB, 20)
    path = tmp_path / "ended.bin"
    path.write_bytes(data)

    with FolderWatch(watched, service.server.process.pid) as watch:
        # Termination: tus-js-client stops after 12 MiB and ends the upload (DELETE).
        code, ended = run_tus_js(
            {
                "endpoint": f"{service.url}/tus/",
                "file": str(path),
                "token": service.headers["X-Auth-Token"],
                "chunkSize": 4 * MiB,
                "urlStorage": str(tmp_path / "urls.json"),
                "abortAt": 12 * MiB,
                "terminate": True,
            }
        )
        assert (code, ended.get("aborted")) == (0, True), ended
        gone = service.http.head(ended["url"], headers=tus_headers(service))
        assert gone.status_code == 404

        # Expiry: tuspy sends 9.5 MiB and is never heard of again.
        client = TusClient(f"{service.url}/tus/", headers=service.headers)
        left = client.uploader(str(path), chunk_size=PIECE)
        left.upload(stop_at=9 * MiB + MiB // 2)  # two PATCHes: 4.5 MiB, then 9.5
        deadline = time.monotonic() + WAIT_S
        while keys.keys("paimon:*tus*") and time.monotonic() < deadline:
            time.sleep(0.2)

    assert keys.keys("paimon:*tus*") == []  # records, expiry index, locks: all gone
    assert service.http.head(left.url, headers=tus_headers(service)).status_code == 404
    assert files_in(emulator) == files_before
    assert watch.seen == []
    assert not any(watched.rglob("*.*"))


def test_pieces_too_small_for_a_mega_chunk_are_refused_with_the_size_needed(
    services: list[Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    service = start(services, emulator, tmp_path / "server")
    assert wait_ready(service) == 200
    path = tmp_path / "small-pieces.bin"
    path.write_bytes(payload(3 * MiB, 3))
    client = TusClient(f"{service.url}/tus/", headers=service.headers)
    # MEGA's chunks grow by 128 KiB up to 1 MiB: 512 KiB pieces go in until a chunk is larger.
    uploader = client.uploader(str(path), chunk_size=512 * 1024)

    with pytest.raises(TusCommunicationError) as refused:
        uploader.upload()

    assert refused.value.status_code == 400
    assert json.loads(refused.value.response_content)["code"] == "piece_too_small"
    assert uploader.offset == 1280 * 1024  # 128 + 256 + 384 + 512 KiB were taken
