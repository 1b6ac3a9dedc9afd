"""Shared fixtures: settings for a test app, the real ASGI app, and a real server process."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.access.tokens import token_sha256
from app.config import Settings, load_settings
from app.main import create_app
from app.storage.base import StorageBackend
from tests.mega_emulator import MegaEmulator

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Settings for the MEGA backend with MEGA out of reach (nothing listens on that port): the
# log-in fails in the background and is tried again, while the service answers.
MEGA_OUT_OF_REACH = {
    "STORAGE_BACKEND": "mega",
    "MEGA_EMAIL": "someone@example.com",
    "MEGA_PASSWORD": "a-password-nobody-checks",
    "MEGA_API_URL": f"http://127.0.0.1:{free_port()}",
}


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def make_settings(tmp_path: Path, token: str) -> Callable[..., Settings]:
    """Settings for the local backend inside tmp_path; keyword arguments override fields."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "auth_token": token,
            "storage_backend": "local",
            "local_storage_dir": tmp_path / "files",
            "temp_upload_dir": tmp_path / "spool",
            "mega_session_file": tmp_path / "mega-session.json",
            "tus_state_dir": tmp_path / "tus-state",
        }
        values.update(overrides)
        return load_settings(_env_file=None, **values)

    return make


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., TestClient]]:
    """A TestClient (lifespan included) for an app built from overridden settings."""
    clients: list[TestClient] = []

    def make(
        backend: StorageBackend | None = None, raise_errors: bool = True, **overrides: Any
    ) -> TestClient:
        app = create_app(make_settings(**overrides), backend=backend)
        client = TestClient(app, raise_server_exceptions=raise_errors)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"X-Auth-Token": token}


@dataclass
class ServerProcess:
    url: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    tmp: Path = field(default=Path())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_line(self, text: str, wait_s: float = 15) -> str:
        """The first line of the log that holds ``text``, waiting up to ``wait_s`` for it."""
        deadline = time.monotonic() + wait_s
        while True:
            lines = [line for line in self.log().splitlines() if text in line]
            if lines:
                return lines[0]
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server did not become healthy:\n{log_path.read_text(errors='replace')}")


def start_server(
    tmp_path: Path,
    env_overrides: dict[str, str | None],
    argv: list[str] | None = None,
    cwd: Path = ROOT,
) -> ServerProcess:
    """Run the service as a real process on 127.0.0.1 and wait until /health answers."""
    port = free_port()
    env = service_env(tmp_path, port, env_overrides)
    argv = argv or [sys.executable, "-m", "uvicorn", "server:app", "--port", str(port)]
    argv = [part.replace("{port}", str(port)) for part in argv]
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(url, port, env, process, log_path, tmp_path)
    try:
        wait_until_healthy(url, process, log_path)
    except BaseException:
        server.stop()
        raise
    return server


def service_env(tmp_path: Path, port: int, overrides: dict[str, str | None]) -> dict[str, str]:
    """The environment of a service process: this one's without the service's settings,
    then a local-storage service in ``tmp_path`` on ``port``, then ``overrides`` (None
    removes a variable)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("MEGA_", "AUTH_", "STORAGE_", "LOCAL_", "TEMP_", "MAX_", "REDIS_", "TOKENS_")
        )
        and not key.startswith(("TICKET_", "METRICS_", "LOG_FORMAT", "PROMETHEUS_", "TUS_"))
    }
    env.update(
        {
            "AUTH_TOKEN": secrets.token_urlsafe(24),
            "STORAGE_BACKEND": "local",
            "LOCAL_STORAGE_DIR": str(tmp_path / "files"),
            "TEMP_UPLOAD_DIR": str(tmp_path / "spool"),
            "MEGA_SESSION_FILE": str(tmp_path / "mega-session.json"),
            "TUS_STATE_DIR": str(tmp_path / "tus-state"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            # Served local storage needs it: links never come from the Host header.
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(argv: list[str] | None = None, cwd: Path = ROOT, **env: str | None) -> ServerProcess:
        server = start_server(tmp_path, env, argv, cwd)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


REDIS_START_TIMEOUT_S = 10


@dataclass
class RedisServer:
    """A real redis-server on 127.0.0.1 that a test can stop and start again."""

    binary: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.folder)]
        with (self.folder / "redis.log").open("ab") as log_file:
            self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError((self.folder / "redis.log").read_text(errors="replace"))
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Debian's redis-server on a free port; skipped where missing, except in CI."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def tokens_toml(**clients: dict[str, Any]) -> str:
    """TOKENS_FILE text: one ``[tokens.<name>]`` per keyword; a ``secret`` key is stored hashed."""
    lines = []
    for name, fields in clients.items():
        lines.append(f"[tokens.{name}]")
        for key, value in fields.items():
            if key == "secret":
                key, value = "token_sha256", token_sha256(value)
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """Rewrite a file the way an editor saving over it does (same inode)."""
    with path.open("r+" if path.exists() else "w") as file:
        file.seek(0)
        file.write(text)
        file.truncate()


@contextmanager
def held_upload_slot(server: ServerProcess, wait_s: float = 30) -> Iterator[None]:
    """Hold one upload slot of ``server`` (a PUT that announces 50 MiB and sends 1 KiB).

    Returns once another upload is answered 503, so with ``MAX_CONCURRENT_UPLOADS=1`` the
    service is busy until the block ends and the connection closes.
    """
    head = (
        f"PUT /files/held.bin HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-Auth-Token: {server.env['AUTH_TOKEN']}\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait_s) as sock:
        sock.sendall(head + b"h" * 1024)
        deadline = time.monotonic() + wait_s
        while True:
            probe = httpx.put(
                f"{server.url}/files/probe.txt",
                headers={"X-Auth-Token": server.env["AUTH_TOKEN"]},
                content=b"p",
                timeout=wait_s,
            )
            if probe.status_code == 503:
                break
            assert time.monotonic() < deadline, "the held upload never took the slot"
            time.sleep(0.05)
        yield


# == MEGA emulator: the one fixture every MEGA test module uses ==========================
#
# A module says which emulator it needs with a module-level ``MEGA_EMULATOR =
# EmulatorOptions(...)``; one test can ask for another with
# ``@pytest.mark.parametrize("emulator", [EmulatorOptions(...)], indirect=True)``.
# The emulator runs once per module (and per options); ``fresh_per_test`` gives each test
# a cloud of its own (``MegaEmulator.reset``, then the accounts again), otherwise only the
# faults and counters are reset between tests (modules that share a running service).


@dataclass(frozen=True)
class EmulatorOptions:
    """What a test module needs from the MEGA emulator."""

    seed: int = 11
    # (email, password) of the accounts to create, as version 2 accounts.
    accounts: tuple[tuple[str, str], ...] = ()
    # mega.py's /file/ link parser cannot cope with '-' in handles.
    avoid_dash_in_handles: bool = False
    tls: bool = False
    fresh_per_test: bool = True


def _emulator_options(request: pytest.FixtureRequest) -> EmulatorOptions:
    given = getattr(request, "param", None)
    if isinstance(given, EmulatorOptions):
        return given
    return getattr(request.module, "MEGA_EMULATOR", EmulatorOptions())


# The options each running emulator was started with, and the emulators no test used yet.
_RUNNING: dict[int, EmulatorOptions] = {}
_UNUSED: set[int] = set()


@pytest.fixture(scope="module")
def emulator(request: pytest.FixtureRequest) -> Iterator[MegaEmulator]:
    """A running MEGA emulator on 127.0.0.1 with the module's (or the test's) options."""
    options = _emulator_options(request)
    with MegaEmulator(
        seed=options.seed, avoid_dash_in_handles=options.avoid_dash_in_handles, tls=options.tls
    ) as emu:
        for email, password in options.accounts:
            emu.add_account(email, password)
        _RUNNING[id(emu)] = options
        _UNUSED.add(id(emu))
        try:
            yield emu
        finally:
            _RUNNING.pop(id(emu), None)
            _UNUSED.discard(id(emu))


@pytest.fixture(autouse=True)
def _emulator_between_tests(request: pytest.FixtureRequest) -> None:
    """Each test starts from the emulator's defaults (see the block's comment)."""
    if "emulator" not in request.fixturenames:
        return
    emu: MegaEmulator = request.getfixturevalue("emulator")
    options = _RUNNING[id(emu)]
    if id(emu) in _UNUSED:  # just started: nothing to undo
        _UNUSED.discard(id(emu))
    elif options.fresh_per_test:
        emu.reset()
        for email, password in options.accounts:
            emu.add_account(email, password)
    else:
        emu.faults.reset()
        emu.reset_stats()


# == end of the MEGA emulator block ======================================================
