"""End to end: a real server process with STORAGE_BACKEND=mega against the MEGA emulator.

Every upload is checked by downloading it through the returned link, decrypting it and
checking its MAC (``tests.mega_verify``), and where mega.py can (no '-' in the handle,
not empty, last chunk longer than 16 bytes) by mega.py's own ``download_url`` too.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests

from tests.conftest import ROOT, START_TIMEOUT_S, EmulatorOptions, free_port
from tests.mega_emulator import MegaEmulator
from tests.mega_verify import verify
from tests.support.deploy import start_command_argv
from tests.support.mega_service import (
    EMAIL,
    HTTP_TIMEOUT,
    MEGA_PY_CHECKS,
    PASSWORD,
    Service,
    check_stored,
    payload,
    start_service,
)
from tests.support.metrics import samples, value

KiB, MiB = 1024, 1024 * 1024
# One emulator and one service for the module's tests; faults and counters are reset.
MEGA_EMULATOR = EmulatorOptions(seed=23, accounts=((EMAIL, PASSWORD),), fresh_per_test=False)


@pytest.fixture(scope="module")
def service(emulator: MegaEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = start_service(tmp_path_factory.mktemp("e2e-server"), emulator)
    yield running
    running.close()


@pytest.fixture
def new_service(emulator: MegaEmulator, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(name: str = "server", argv: list[str] | None = None, **env: str) -> Service:
        running = start_service(tmp_path / name, emulator, argv, **env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


# -- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 15, 16, 17, 128 * KiB - 1, 128 * KiB + 1, MiB + 5, 10 * MiB + 3]
)
def test_upload_of_each_size_is_stored_intact(
    service: Service,
    emulator: MegaEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    # mega.py downloads with requests.get and no timeout; give it one.
    monkeypatch.setattr(requests, "get", functools.partial(requests.get, timeout=HTTP_TIMEOUT))
    data = payload(size, size)
    name = f"size {size}.bin"
    check_stored(emulator, service.upload(name, data), name, data, tmp_path)
    assert service.leftovers() == []


def test_mega_py_read_some_of_the_uploads_too() -> None:
    # Runs after the sizes above (file order); without it a handle format change could
    # silently skip the second check for every size.
    assert len(MEGA_PY_CHECKS) >= 2, MEGA_PY_CHECKS


# -- faults ---------------------------------------------------------------------------

SURVIVABLE = {
    # Each with a counter too, so that the fault surely fires at least once.
    "api_eagain": {"api_eagain_next": 2, "api_eagain_probability": 0.3},
    "chunk_http500": {"chunk_http500_next": 2, "chunk_http500_probability": 0.3},
    "chunk_dropped": {"chunk_drop_next": 1, "chunk_drop_probability": 0.2},
    "chunk_answer_-4": {"chunk_error_next": 2, "chunk_error_code": -4},
    "upload_url_403": {"chunk_http403_next": 2},
    "session_expiry": {},  # handled in the test: expire the live sessions once
}


@pytest.mark.parametrize("fault", SURVIVABLE)
def test_uploads_survive_fault(service: Service, emulator: MegaEmulator, fault: str) -> None:
    if fault == "session_expiry":
        # Expire the sessions once (not every new one): MEGA logged the service out.
        emulator.expire_sessions()
    else:
        emulator.faults.update(**SURVIVABLE[fault])
    for index, size in enumerate([0, 17, 200 * KiB, 2 * MiB + 1]):
        data = payload(size, f"{fault}-{index}")
        check_stored(emulator, service.upload(f"{fault}-{index}", data), f"{fault}-{index}", data)
    emulator.faults.reset()
    assert service.health() == 200
    assert service.leftovers() == []
    if fault == "session_expiry":
        assert emulator.stats()["logins_ok"] == 1
    else:
        assert emulator.stats()["faults_injected"], "the fault never fired"


def test_over_quota_is_507(service: Service, emulator: MegaEmulator) -> None:
    emulator.faults.over_quota_upload_url = True
    response = service.upload("full.bin", b"x" * 100)
    assert response.status_code == 507
    assert "quota" in response.json()["message"]
    emulator.faults.reset()
    emulator.faults.chunk_http509_next = 1
    response = service.upload("transfer.bin", b"x" * 100)
    # Not a full drive: MEGA refuses the transfer itself until its quota renews.
    assert response.status_code == 502
    assert response.json()["message"] == "MEGA transfer quota exceeded"
    assert service.health() == 200
    assert service.leftovers() == []


@pytest.mark.parametrize("slow", ["chunk_delay", "api_delay"])
def test_slow_answers_end_at_the_deadline(
    new_service: Callable[..., Service], emulator: MegaEmulator, slow: str
) -> None:
    deadline = 2.0
    service = new_service(MEGA_UPLOAD_DEADLINE_SECONDS=str(deadline), MEGA_READ_TIMEOUT="0.4")
    check_stored(emulator, service.upload("warm.bin", b"w"), "warm.bin", b"w")  # log-in, folder
    emulator.faults.update(**{slow: 1.0})
    started = time.monotonic()
    response = service.upload("slow.bin", payload(300 * KiB, 1))
    elapsed = time.monotonic() - started
    emulator.faults.reset()
    assert response.status_code == 504, response.text
    # Each of u, upload, p and l is cut at the deadline; together at most a few of them.
    assert elapsed < deadline * 3, elapsed
    assert service.health() == 200
    assert service.leftovers() == []


def test_failures_keep_secrets_out_of_answers(service: Service, emulator: MegaEmulator) -> None:
    emulator.faults.update(chunk_http500_probability=1.0)
    response = service.upload("never.bin", b"abc")
    emulator.faults.reset()
    assert response.status_code == 502
    text = response.text
    assert PASSWORD not in text and emulator.url not in text and "/ul/" not in text


# -- load ------------------------------------------------------------------------------


def test_two_hundred_uploads_under_eagain_and_chunk_failures(
    service: Service, emulator: MegaEmulator
) -> None:
    emulator.faults.update(
        api_eagain_probability=0.3,
        chunk_http500_probability=0.1,
        chunk_drop_probability=0.05,
        chunk_http503_probability=0.05,
    )
    rng = random.Random(200)
    files = [(f"load-{i}.txt", rng.randbytes(rng.randrange(0, 40 * KiB))) for i in range(200)]

    def one(item: tuple[str, bytes]) -> tuple[str, bytes, httpx.Response]:
        return item[0], item[1], service.upload(*item)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, files, timeout=150))
    emulator.faults.reset()
    failed = [(name, r.status_code, r.text) for name, _, r in results if r.status_code != 200]
    assert failed == []
    for name, data, response in results:
        verify(emulator.url, response.json()["link"], data, name=name)
    stats = emulator.stats()
    assert stats["faults_injected"].get("api_eagain", 0) > 20
    assert stats["files_stored"] == 200
    assert service.leftovers() == []


def test_session_expiry_mid_run_costs_one_login(
    new_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    service = new_service()
    files = [(f"run-{i}.txt", payload(i * 100, f"run-{i}")) for i in range(40)]
    expired = threading.Event()

    def one(index: int) -> httpx.Response:
        if index == 20 and not expired.is_set():
            emulator.expire_sessions()
            expired.set()
        return service.upload(*files[index])

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(one, range(len(files)), timeout=120))
    assert [r.status_code for r in responses] == [200] * len(files)
    for (name, data), response in zip(files, responses, strict=True):
        verify(emulator.url, response.json()["link"], data, name=name)
    stats = emulator.stats()
    assert stats["logins_ok"] == 2  # the first log-in, and one after the expiry


# -- processes ---------------------------------------------------------------------------


def test_gunicorn_workers_and_a_restart_share_one_login(
    new_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "server:app",
        "--workers",
        "2",
        "--worker-class",
        "uvicorn_worker.UvicornWorker",
        "--bind",
        "127.0.0.1:{port}",
    ]
    first = new_service("gunicorn", argv)

    def burst(service: Service, tag: str) -> None:
        items = [(f"{tag}-{i}", payload(1000 + i, f"{tag}-{i}")) for i in range(16)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda item: service.upload(*item), items, timeout=60))
        for (name, data), response in zip(items, responses, strict=True):
            check_stored(emulator, response, name, data)

    burst(first, "first")
    first.close()
    # The same directory, so the same session file: a restart of the same deployment.
    second = start_service(Path(first.server.env["TEMP_UPLOAD_DIR"]).parent, emulator, argv)
    try:
        burst(second, "second")
    finally:
        second.close()
    assert emulator.stats()["logins_ok"] == 1
    assert emulator.stats()["logins_failed"] == 0


def _mega_env(emulator: MegaEmulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MEGA_", "AUTH_", "STORAGE_", "WEB_CONCURRENCY"))
    }
    env.update(
        AUTH_TOKEN=secrets.token_urlsafe(24),
        STORAGE_BACKEND="mega",
        MEGA_API_URL=emulator.url,
        MEGA_EMAIL=EMAIL,
        MEGA_PASSWORD=PASSWORD,
        MEGA_SESSION_FILE=str(tmp_path / "mega-session.json"),
        TEMP_UPLOAD_DIR=str(tmp_path / "spool"),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("command", ["gunicorn", "python server.py"])
def test_a_refused_password_fails_the_start_command(
    emulator: MegaEmulator, tmp_path: Path, command: str
) -> None:
    env = _mega_env(emulator, tmp_path, MEGA_PASSWORD="a wrong password", WEB_CONCURRENCY="1")
    port = int(env["PORT"])
    argv = start_command_argv(port) if command == "gunicorn" else [sys.executable, "server.py"]
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S * 3
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    causes = [line for line in output.splitlines() if line.startswith("paimon-server:")]
    assert causes == ["paimon-server: cannot start: MEGA login failed: wrong email or password"]
    assert "a wrong password" not in output
    assert emulator.stats()["logins_failed"] == 1


def test_the_log_in_happens_at_start_up_not_in_the_first_upload(
    new_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    service = new_service()
    # Nothing but /health is asked: the service logs in on its own.
    deadline = time.monotonic() + START_TIMEOUT_S
    while emulator.stats()["logins_ok"] == 0 and time.monotonic() < deadline:
        assert service.health() == 200
        time.sleep(0.1)
    assert emulator.stats()["logins_ok"] == 1  # before any upload
    assert wait_ready(service) == 200
    emulator.reset_stats()
    check_stored(emulator, service.upload("first.bin", b"first"), "first.bin", b"first")
    assert emulator.stats()["commands"].get("us", 0) == 0


def test_while_logging_in_health_answers_and_uploads_get_503_retry_after(
    new_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    # A proof of work nobody solves quickly: the log-in runs on and on.
    emulator.faults.update(hashcash_easiness=0)
    service = new_service(MEGA_LOGIN_WAIT_SECONDS="0.5")
    started = time.monotonic()
    for _ in range(5):
        assert service.health() == 200
    assert time.monotonic() - started < 2.5
    response = service.upload("early.bin", b"early")
    assert response.status_code == 503, response.text
    assert "logging in to MEGA" in response.json()["message"]
    assert int(response.headers["Retry-After"]) > 0
    ready = service.http.get(f"{service.url}/ready")
    assert ready.status_code == 503 and "logging in" in ready.json()["message"]


def test_a_blocked_account_makes_uploads_and_ready_503_and_is_logged_once(
    new_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    service = new_service("blocked")
    assert wait_ready(service) == 200
    check_stored(emulator, service.upload("before.bin", b"before"), "before.bin", b"before")
    emulator.faults.update(blocked_emails=[EMAIL], blocked_reason_code=200)
    for index in range(3):
        answer = service.upload(f"blocked-{index}.bin", b"x" * 100)
        assert answer.status_code == 503, answer.text
        assert "MEGA account is blocked" in answer.json()["message"]
        assert "copyright" in answer.json()["message"]
        assert int(answer.headers["Retry-After"]) > 0
    ready = service.http.get(f"{service.url}/ready")
    assert ready.status_code == 503 and "MEGA account is blocked" in ready.text
    assert service.health() == 200
    # The service says it once, not once per refused upload.
    log = service.server.log()
    assert log.count("MEGA blocked the account") == 1
    assert "MEGA account is blocked" not in log, log
    assert service.leftovers() == []


def test_unreachable_mega_keeps_the_service_up_but_not_ready(
    new_service: Callable[..., Service],
) -> None:
    service = new_service(MEGA_API_URL=f"http://127.0.0.1:{free_port()}", MEGA_RETRY_ATTEMPTS="2")
    time.sleep(1.0)
    assert service.health() == 200
    assert service.server.process.poll() is None
    assert service.http.get(f"{service.url}/ready").status_code == 503


def run_session_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python server.py mega-session`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "server.py", "mega-session"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S * 3,
    )


def test_a_session_from_the_session_command_needs_no_log_in(
    new_service: Callable[..., Service], emulator: MegaEmulator, tmp_path: Path
) -> None:
    result = run_session_command(_mega_env(emulator, tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mega-session-v1.")
    assert "credential" in result.stderr  # the operator is told to keep it secret
    assert not (tmp_path / "mega-session.json").exists()  # printed, not stored
    assert emulator.stats()["logins_ok"] == 1
    emulator.reset_stats()

    service = new_service("with-session", MEGA_SESSION=lines[0])
    assert wait_ready(service) == 200
    check_stored(emulator, service.upload("s.bin", b"session"), "s.bin", b"session")
    assert emulator.stats()["logins_ok"] == 0  # zero log-ins at MEGA
    assert lines[0] not in service.server.log()  # a credential: never logged

    # MEGA ended that session: the service falls back to a log-in with the password.
    emulator.expire_sessions()
    check_stored(emulator, service.upload("t.bin", b"again"), "t.bin", b"again")
    assert emulator.stats()["logins_ok"] == 1


def wait_ready(service: Service, timeout_s: float = START_TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout_s
    status = 0
    while time.monotonic() < deadline:
        status = service.http.get(f"{service.url}/ready").status_code
        if status == 200:
            break
        time.sleep(0.1)
    return status


def test_ready_when_logged_in_with_the_folder(service: Service) -> None:
    response = service.http.get(f"{service.url}/ready")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_the_session_command_with_a_refused_password_says_why(
    emulator: MegaEmulator, tmp_path: Path
) -> None:
    result = run_session_command(_mega_env(emulator, tmp_path, MEGA_PASSWORD="a wrong password"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        "paimon-server: MEGA login failed: wrong email or password"
    )
    assert "a wrong password" not in result.stderr


def test_metrics_count_mega_requests_retries_and_the_log_in(
    new_service: Callable[..., Service], emulator: MegaEmulator
) -> None:
    # A folder of its own: the module's other services already made Paimon/uploads.
    service = new_service("metrics", MEGA_FOLDER="Counted/uploads")
    assert wait_ready(service) == 200
    emulator.faults.api_eagain_next = 2
    data = payload(70_000, 11)
    answer = service.upload("counted.bin", data)
    assert answer.status_code == 200, answer.text
    assert emulator.stats()["faults_injected"], "the fault never fired"

    found = samples(service.http.get(f"{service.url}/metrics").text)
    assert value(found, "paimon_mega_logins_total", outcome="ok") == 1
    assert value(found, "paimon_mega_api_requests_total", command="us", outcome="ok") == 1
    assert value(found, "paimon_mega_api_requests_total", command="u", outcome="ok") == 1
    # "p" made the two folders of MEGA_FOLDER (Counted/uploads), then the file's node.
    assert value(found, "paimon_mega_api_requests_total", command="p", outcome="ok") == 3
    assert value(found, "paimon_mega_retries_total", error="EAGAIN") == 2
