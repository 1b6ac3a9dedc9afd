"""gunicorn's master and its workers: a reload (SIGHUP) takes good settings and never
stops the service; workers never outlive their master."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.deploy import start_command_argv, wait_for_workers

WAIT_S = 15
ROUNDS = 12


def put(http: httpx.Client, token: str, size: int) -> int:
    # A fresh connection each time, so that either worker may take it.
    headers = {"X-Auth-Token": token, "Connection": "close"}
    return http.put(f"/files/{size}.bin", content=b"x" * size, headers=headers).status_code


def limit_in_force(http: httpx.Client, token: str, limit: int) -> None:
    """Every worker reached in ``ROUNDS`` fresh connections takes ``limit`` bytes and
    refuses one more."""
    for _ in range(ROUNDS):
        assert (put(http, token, limit), put(http, token, limit + 1)) == (200, 413)


# Mistakes in .env, each with what its one refusal line names.
MISTAKES = {
    "a bad value": (b"MAX_UPLOAD_BYTES=lots\n", "MAX_UPLOAD_BYTES"),
    "a new tokens file that is missing": (
        b"MAX_UPLOAD_BYTES=1000\nTOKENS_FILE=missing-tokens.toml\n",
        "TOKENS_FILE",
    ),
    "bytes that are not text": (b"MAX_UPLOAD_BYTES=1000\n# caf\xe9\n", "not UTF-8"),
}


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_bad_env_file_on_reload_keeps_the_running_settings_and_a_good_one_is_taken(
    live_server, tmp_path: Path, mistake: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env_file = site / ".env"
    env_file.write_text("MAX_UPLOAD_BYTES=1000\n")
    # The start command run from a folder of the operator's own, where its .env lives.
    config = str(ROOT / "gunicorn.conf.py")
    argv = [config if part == "gunicorn.conf.py" else part for part in start_command_argv("{port}")]
    server = live_server(argv, cwd=site, PYTHONPATH=str(ROOT), WEB_CONCURRENCY="2")
    token = server.env["AUTH_TOKEN"]
    master = server.process.pid
    workers = wait_for_workers(master, 2, set(), WAIT_S)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        limit_in_force(http, token, 1000)

        # A mistake, then a reload: gunicorn replaces every worker.
        text, named = MISTAKES[mistake]
        env_file.write_bytes(text)
        server.process.send_signal(signal.SIGHUP)
        workers = wait_for_workers(master, 2, workers, WAIT_S)
        limit_in_force(http, token, 1000)
        assert server.process.poll() is None, "a bad .env must never stop the service"

        # The mistake fixed with a new value, then a reload: the new value is served.
        env_file.write_text("MAX_UPLOAD_BYTES=2000\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for_workers(master, 2, workers, WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while put(http, token, 2000) != 200:
            assert time.monotonic() < deadline, "the good settings were never served"
            time.sleep(0.1)
        limit_in_force(http, token, 2000)
    assert server.process.poll() is None
    log = server.log()
    refusals = [line for line in log.splitlines() if "settings refused on reload" in line]
    assert len(refusals) == 1, log
    assert named in refusals[0] and "lots" not in refusals[0]
    assert log.count("settings read again on reload") == 1
    assert "exited with code 3" not in log


def running(pid: int) -> bool:
    """Whether process ``pid`` is still running (a zombie waiting for its parent is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_leave_when_their_master_is_killed_and_free_the_port(live_server) -> None:
    server = live_server(start_command_argv("{port}"), WEB_CONCURRENCY="2")
    workers = wait_for_workers(server.process.pid, 2, set(), WAIT_S)
    try:
        server.process.kill()  # SIGKILL: the master cannot tell its workers anything
        server.process.wait(WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while left := {pid for pid in workers if running(pid)}:
            assert time.monotonic() < deadline, f"workers {left} outlived their master"
            time.sleep(0.1)
        with socket.socket() as probe:  # the next start can have the port, as gunicorn binds
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", server.port))
            probe.listen()
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
