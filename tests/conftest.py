"""Shared fixtures: settings for a test app, the real ASGI app, and a real server process."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.storage.base import StorageBackend

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20


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
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MEGA_", "AUTH_", "STORAGE_", "LOCAL_", "TEMP_", "MAX_"))
    }
    env.update(
        {
            "AUTH_TOKEN": secrets.token_urlsafe(24),
            "STORAGE_BACKEND": "local",
            "LOCAL_STORAGE_DIR": str(tmp_path / "files"),
            "TEMP_UPLOAD_DIR": str(tmp_path / "spool"),
            "MEGA_SESSION_FILE": str(tmp_path / "mega-session.json"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            # Served local storage needs it: links never come from the Host header.
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in env_overrides.items():  # None removes a variable
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
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
