"""The install path and the deployment files agree with each other and really work.

Every place that installs the service must use the one install command (with the
constraints file), every place that picks a Python must pick 3.12, the lock must keep the
known-broken packages out, and the start command from render.yaml must really serve
/health and stop cleanly on SIGTERM. Each test bounds its own waits (no timeout plugin).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy import render_service, start_command_argv

ROOT = Path(__file__).resolve().parent.parent

INSTALL = (
    "python -m pip install --no-deps --only-binary :all: --require-hashes "
    "--constraint constraints.txt -r requirements.txt"
)
START = "gunicorn server:app --config gunicorn.conf.py --bind 0.0.0.0:$PORT"
TEST_COMMAND = "python -m pytest -q"
INSTALL_PATHS = ("README.md", "DEPLOYMENT.md", "Dockerfile", "render.yaml", ".ci/run")
PIP_INSTALL = re.compile(r"\bpip3?(?:\.exe)?\s+install\b")

START_WAIT_S = 30
STOP_WAIT_S = 30
COMMAND_WAIT_S = 120


def read(name: str) -> str:
    path = ROOT / name
    assert path.is_file(), f"{name} is missing"
    return path.read_text(encoding="utf-8")


def render_env() -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in render_service()["envVars"]}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with backslash continuations joined."""
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def docker_json_command(arguments: str) -> list[str]:
    """The exec-form (JSON array) command of a CMD or HEALTHCHECK ... CMD instruction."""
    start = arguments.index("[")
    command = json.loads(arguments[start:])
    assert isinstance(command, list), "expected an exec-form (JSON array) command"
    assert all(isinstance(part, str) for part in command)
    return command


def readme_block_lines(section: str) -> list[str]:
    """Lines of the first ```sh block under the README heading `## <section>`."""
    text = read("README.md")
    match = re.search(rf"^## {section}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {section}' section"
    block = re.search(r"```(?:sh|bash|console)\n(.*?)```", match.group(1), re.S)
    assert block, f"README.md '## {section}' has no ```sh block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


# --- The one install command ---------------------------------------------------------


def test_readme_states_the_install_and_test_commands() -> None:
    install = [line for line in readme_block_lines("Install") if PIP_INSTALL.search(line)]
    assert install == [INSTALL]
    assert TEST_COMMAND in readme_block_lines("Test")


@pytest.mark.parametrize("name", INSTALL_PATHS)
def test_every_install_line_is_the_one_command(name: str) -> None:
    lines = [line.strip() for line in read(name).splitlines() if PIP_INSTALL.search(line)]
    assert lines, f"{name} installs nothing with pip"
    for line in lines:
        assert "--constraint constraints.txt" in line, f"{name}: no constraints file: {line}"
        assert INSTALL in line, f"{name}: not the one install command: {line}"
        prefix, _, suffix = line.partition(INSTALL)
        # Only a shell prompt, Dockerfile RUN, YAML key or quoting may surround it.
        assert prefix.strip(" '\"$") in {"", "RUN", "buildCommand:", "-"}, f"{name}: {line}"
        assert suffix.strip(" '\"") == "", f"{name}: extra arguments: {line}"


def test_render_build_command_is_the_install_command() -> None:
    assert render_service()["buildCommand"] == INSTALL


def test_dockerfile_installs_like_the_readme() -> None:
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    installs = [args for args in runs if PIP_INSTALL.search(args)]
    readme = [line for line in readme_block_lines("Install") if PIP_INSTALL.search(line)]
    assert installs == readme


def test_requirements_header_names_the_install_command() -> None:
    assert INSTALL in read("requirements.txt")


# --- One Python: 3.12 ----------------------------------------------------------------


def test_python_is_312_everywhere() -> None:
    assert read(".python-version").strip() == "3.12"
    assert re.fullmatch(r"3\.12\.\d+", str(render_env()["PYTHON_VERSION"]["value"]))
    bases = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.12(-slim)?", bases[0].split()[0]), bases[0]


# --- render.yaml ---------------------------------------------------------------------


def test_render_blueprint_values() -> None:
    service = render_service()
    assert service["runtime"] == "python"
    assert service["name"]
    assert service["startCommand"] == START
    assert service["healthCheckPath"] == "/health"
    assert 1 <= service["maxShutdownDelaySeconds"] <= 300
    env = render_env()
    assert env["AUTH_TOKEN"] == {"key": "AUTH_TOKEN", "generateValue": True}
    for secret in ("MEGA_EMAIL", "MEGA_PASSWORD", "MEGA_TOTP_SECRET", "MEGA_SESSION"):
        assert env[secret] == {"key": secret, "sync": False}, "secrets are never committed"
    assert env["STORAGE_BACKEND"]["value"] == "mega"
    assert env["MEGA_FOLDER"]["value"]
    assert str(env["WEB_CONCURRENCY"]["value"]) == "2"
    # Never "*": uvicorn would then take the leftmost X-Forwarded-For entry, the client's.
    assert "*" not in env["FORWARDED_ALLOW_IPS"]["value"]


def test_graceful_timeout_fits_inside_render_shutdown_delay() -> None:
    config = load_gunicorn_config({})
    assert config["graceful_timeout"] < render_service()["maxShutdownDelaySeconds"]


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_runs_the_render_start_command_as_non_root() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the service must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    envs = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert re.search(r"\bPORT=8080\b", envs)
    cmd = [args for keyword, args in instructions if keyword == "CMD"]
    assert len(cmd) == 1
    assert docker_json_command(cmd[0]) == ["sh", "-c", f"exec {START}"]


def test_dockerfile_healthcheck_uses_python_not_curl() -> None:
    checks = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = docker_json_command(checks[0])
    assert command[0] == "python"
    assert "urllib.request" in command[-1] and "/health" in command[-1]
    assert "curl" not in checks[0] and "wget" not in checks[0]


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip() for line in read(".dockerignore").splitlines()}
    assert {".env", ".git", ".venv", "data"} <= ignored
    assert "tests" not in ignored, "the image ships the test suite"


# --- The lock ------------------------------------------------------------------------


def lock_requirements() -> list[str]:
    joined = re.sub(r"\\\n", " ", read("requirements.txt"))
    return [line.split(" #")[0].strip() for line in joined.splitlines()]


def test_lock_is_fully_pinned_and_hashed() -> None:
    lines = [line for line in lock_requirements() if line and not line.startswith("#")]
    assert "-c constraints.txt" in lines
    pins = {}
    for line in lines:
        if line.startswith("-"):
            assert line == "-c constraints.txt", f"unexpected option line: {line}"
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+?)(?:\s*;[^-]*)?\s+--hash=sha256:", line)
        assert match, f"not pinned with == and a hash: {line[:80]}"
        assert all(
            re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", token)
            for token in line.split()
            if token.startswith("--hash")
        )
        pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    assert "pathlib" not in pins, "the pathlib backport shadows the standard library"
    assert int(pins["tenacity"].split(".")[0]) >= 8
    assert pins["mega-py"] == "1.0.8"
    major, minor = (int(part) for part in pins["pydantic-core"].split(".")[:2])
    assert (major, minor) >= (2, 23), "pydantic-core before 2.23 has no Python 3.13 wheels"
    assert int(pins["pycryptodome"].split(".")[0]) == 3


def test_pathlib_never_appears_as_a_distribution() -> None:
    for name in ("requirements.in", "requirements.txt", "constraints.txt"):
        for line in read(name).splitlines():
            requirement = line.split("#")[0].strip()
            assert not re.match(r"pathlib\b", requirement, re.I), f"{name}: {line}"


def test_every_constraint_says_why() -> None:
    lines = read("constraints.txt").splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert number > 0 and lines[number - 1].startswith("#"), f"no reason for: {line}"


def test_pip_check_reports_only_known_mega_metadata() -> None:
    """mega.py's declared pins are deliberately not installed; nothing else may clash."""
    if os.environ.get("PIP_CHECK_SKIP"):
        pytest.skip("PIP_CHECK_SKIP is set")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"],
        capture_output=True,
        text=True,
        timeout=COMMAND_WAIT_S,
        check=False,
    )
    if "No module named pip" in result.stderr:
        pytest.skip("pip is not installed in this environment")
    known = re.compile(
        r"mega[.-]py 1\.0\.8 (requires pathlib, which is not installed\."
        r"|has requirement tenacity<6\.0\.0,>=5\.1\.5, but you have tenacity \S+\.)"
    )
    other = [line for line in result.stdout.splitlines() if line and not known.fullmatch(line)]
    assert other == [], result.stdout + result.stderr


# --- pyproject / CI ------------------------------------------------------------------


def test_pytest_collects_the_install_self_check() -> None:
    config = tomllib.loads(read("pyproject.toml"))
    assert "test_pathlib.py" in config["tool"]["pytest"]["ini_options"]["testpaths"]


def test_ci_script_is_strict_and_uses_the_same_commands() -> None:
    path = ROOT / ".ci" / "run"
    assert os.access(path, os.X_OK), ".ci/run must be executable"
    text = read(".ci/run")
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    assert INSTALL in text
    assert TEST_COMMAND in text
    assert "python test_pathlib.py" in text


# --- gunicorn ------------------------------------------------------------------------


# The least the service starts with: gunicorn.conf.py refuses to load without them.
SERVICE_SETTINGS = {
    "AUTH_TOKEN": secrets.token_urlsafe(24),
    "STORAGE_BACKEND": "local",
    "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
}


def load_gunicorn_config(env: dict[str, str]) -> dict[str, Any]:
    """Evaluate gunicorn.conf.py in a child process with exactly `env` (plus PATH and the
    settings the service needs: reading the file checks them)."""
    env = {**SERVICE_SETTINGS, **env}
    code = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: v for k, v in c.items() if k[0] != '_' and "
        "isinstance(v, (str, int, float, list, bool))}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=COMMAND_WAIT_S,
        check=True,
    )
    return json.loads(result.stdout)


def test_gunicorn_config_defaults_and_environment() -> None:
    config = load_gunicorn_config({})
    assert config["worker_class"] == "app.serving.worker.PaimonWorker"
    assert config["control_socket_disable"] is True, "no control socket unless asked for"
    assert config["bind"] == ["0.0.0.0:8080"]
    assert config["workers"] == 2
    assert config["timeout"] >= 60, "the uvicorn worker timeout is only a heartbeat"
    assert config["graceful_timeout"] >= 60, "in-flight uploads need time to finish"
    assert config["accesslog"] == "-"
    tuned = load_gunicorn_config({"HOST": "127.0.0.1", "PORT": "9000", "WEB_CONCURRENCY": "3"})
    assert tuned["bind"] == ["127.0.0.1:9000"]
    assert tuned["workers"] == 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def test_start_command_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    token = secrets.token_urlsafe(24)  # 32 characters
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEGA_")}
    env.update(
        AUTH_TOKEN=token,
        STORAGE_BACKEND="local",
        LOCAL_STORAGE_DIR=str(tmp_path / "files"),
        TEMP_UPLOAD_DIR=str(tmp_path / "spool"),
        MEGA_SESSION_FILE=str(tmp_path / "mega-session.json"),
        WEB_CONCURRENCY="1",
        PORT=str(port),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
    )
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            start_command_argv(port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/health"
            deadline = time.monotonic() + START_WAIT_S
            status = None
            while time.monotonic() < deadline and process.poll() is None:
                status = get_status(url)
                if status == 200:
                    break
                time.sleep(0.2)
            logs = log_path.read_text(errors="replace")
            assert status == 200, f"no 200 from /health within {START_WAIT_S}s:\n{logs}"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert json.load(response) == {"status": "ok"}

            # The Dockerfile's HEALTHCHECK command passes against the running server.
            check = next(a for k, a in dockerfile_instructions() if k == "HEALTHCHECK")
            command = docker_json_command(check)
            healthcheck = subprocess.run(
                [sys.executable, *command[1:]],
                env={**os.environ, "PORT": str(port)},
                capture_output=True,
                timeout=COMMAND_WAIT_S,
                check=False,
            )
            assert healthcheck.returncode == 0, healthcheck.stderr

            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=STOP_WAIT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_WAIT_S)
    logs = log_path.read_text(errors="replace")
    assert returncode == 0, f"gunicorn exited with {returncode} after SIGTERM:\n{logs}"
    assert "GET /health" in logs, "the access log should go to stdout"
    assert token not in logs, "the auth token must never be logged"
