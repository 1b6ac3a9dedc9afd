"""Start-up checks, as an operator meets them: a bad setting stops `python server.py` and
gunicorn's start command (two workers) with exactly one line naming it, exit status 3."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, service_env, tokens_toml
from tests.support.deploy import start_command_argv

STOP_WAIT_S = 30
PASSWORD = "hunter2-redis-password"
DEVELOPMENT = [sys.executable, "server.py"]


@dataclass
class Stopped:
    status: int
    stdout: str
    stderr: str


def run_until_stopped(tmp_path: Path, argv: list[str], **overrides: str | None) -> Stopped:
    """Start the service with ``overrides`` and wait (boundedly) for it to stop by itself."""
    env = service_env(tmp_path, free_port(), {"WEB_CONCURRENCY": "2", **overrides})
    try:
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=STOP_WAIT_S
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"still running after {STOP_WAIT_S} s: {error.stderr}") from None
    return Stopped(done.returncode, done.stdout, done.stderr)


def gunicorn(port: str = "{port}") -> list[str]:
    """render.yaml's start command, with $PORT expanded to ``port`` as the shell would."""
    return start_command_argv(port)


@pytest.mark.parametrize(
    ("setting", "overrides"),
    [
        ("MAX_UPLOAD_BYTES", {"MAX_UPLOAD_BYTES": "lots"}),
        ("AUTH_TOKEN", {"AUTH_TOKEN": None}),
        ("PUBLIC_BASE_URL", {"PUBLIC_BASE_URL": None}),
    ],
)
def test_gunicorn_checks_settings_once_and_says_so_in_one_line(
    tmp_path: Path, setting: str, overrides: dict[str, str | None]
) -> None:
    argv = [part.replace("{port}", str(free_port())) for part in gunicorn()]

    stopped = run_until_stopped(tmp_path, argv, **overrides)

    assert stopped.status == 3
    assert stopped.stdout == ""
    lines = stopped.stderr.splitlines()
    assert len(lines) == 1, stopped.stderr
    assert lines[0].startswith(f"paimon-server: configuration error: {setting} ")


@pytest.mark.parametrize("port", [None, ""], ids=["unset", "empty"])
def test_gunicorn_without_a_port_names_port(tmp_path: Path, port: str | None) -> None:
    # The shell expands `--bind 0.0.0.0:$PORT` to `--bind 0.0.0.0:`.
    stopped = run_until_stopped(tmp_path, gunicorn(port=""), PORT=port)

    assert stopped.status == 3
    lines = stopped.stderr.splitlines()
    assert len(lines) == 1, stopped.stderr
    assert lines[0].startswith("paimon-server: configuration error: PORT is ")


def test_gunicorn_with_a_bad_tokens_file_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(kiosk={"token_sha256": "abc"}))
    argv = [part.replace("{port}", str(free_port())) for part in gunicorn()]

    stopped = run_until_stopped(tmp_path, argv, TOKENS_FILE=str(path))

    assert stopped.status == 3
    assert stopped.stderr.splitlines() == [
        "paimon-server: configuration error: TOKENS_FILE entry 'kiosk': "
        "token_sha256 must be 64 hex digits"
    ]


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@localhost:notaport/0",
        f"redis://:{PASSWORD}@[::1/0",
        f"redis://:{PASSWORD}@localhost:6379/0?socket_timeout=soon",
        f"redis://:{PASSWORD}",
    ],
    ids=["port", "host", "option", "password-as-port"],
)
@pytest.mark.parametrize("how", ["python server.py", "gunicorn"])
def test_a_malformed_redis_url_is_one_line_without_its_password(
    tmp_path: Path, url: str, how: str
) -> None:
    argv = DEVELOPMENT if how == "python server.py" else gunicorn()
    argv = [part.replace("{port}", str(free_port())) for part in argv]

    stopped = run_until_stopped(tmp_path, argv, REDIS_URL=url)

    assert stopped.status == 3
    lines = stopped.stderr.splitlines()
    assert len(lines) == 1, stopped.stderr
    assert lines[0].startswith("paimon-server: configuration error: REDIS_URL ")
    assert PASSWORD not in stopped.stdout + stopped.stderr
