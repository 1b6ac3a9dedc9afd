"""``python -m app.cli upload`` against a real server process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app import cli
from tests.conftest import ROOT, ServerProcess, free_port, held_upload_slot
from tests.support.cutting_proxy import CuttingProxy

RUN_TIMEOUT_S = 120
MiB = 1024 * 1024


def run_cli(
    server: ServerProcess | None, *args: str, token: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "upload", *args],
        cwd=ROOT,
        env=cli_env(server, token, **env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def cli_env(server: ServerProcess | None, token: str | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAIMON_")}
    if server is not None:
        env["PAIMON_URL"] = server.url
        env["PAIMON_TOKEN"] = token if token is not None else server.env["AUTH_TOKEN"]
    return {**env, **extra}


def test_upload_shows_progress_and_prints_each_link_last(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"])
    first, second = tmp_path / "first.bin", tmp_path / "second file.txt"
    first.write_bytes(os.urandom(3 * MiB))
    second.write_text("second\n")

    result = run_cli(server, str(first), str(second))

    assert result.returncode == cli.EXIT_OK, result.stderr
    links = result.stdout.splitlines()
    assert len(links) == 2
    for link, path in zip(links, [first, second], strict=True):
        assert httpx.get(link, timeout=10).content == path.read_bytes()
    # One progress bar per file, each run to the end, on stderr.
    assert "first.bin: 100%" in result.stderr
    assert "second file.txt: 100%" in result.stderr
    assert "3.00M/3.00M" in result.stderr
    assert server.env["AUTH_TOKEN"] not in result.stdout + result.stderr


def test_a_files_own_date_goes_with_it_either_way(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"])
    plain, resumed = tmp_path / "plain.bin", tmp_path / "resumed.bin"
    for path in (plain, resumed):
        path.write_bytes(os.urandom(2 * MiB))
        os.utime(path, (1_234_567_890, 1_234_567_890))

    for path, extra in ((plain, []), (resumed, ["--resume"])):
        result = run_cli(server, *extra, str(path), XDG_STATE_HOME=str(tmp_path / "state"))
        assert result.returncode == cli.EXIT_OK, result.stderr
        served = httpx.get(result.stdout.strip(), timeout=10)
        assert served.headers["last-modified"] == "Fri, 13 Feb 2009 23:31:30 GMT", path.name


def test_json_output_has_one_checked_answer_per_file(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"])
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(100_000))

    result = run_cli(server, "--json", "--name", "renamed.bin", str(path))

    assert result.returncode == cli.EXIT_OK, result.stderr
    (line,) = result.stdout.splitlines()
    answer = json.loads(line)
    assert answer["file"] == str(path)
    assert answer["filename"] == "renamed.bin"
    assert answer["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert httpx.get(answer["link"], timeout=10).content == path.read_bytes()


def test_a_busy_service_is_asked_again_after_its_retry_after(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"], MAX_CONCURRENT_UPLOADS="1")
    path = tmp_path / "patient.txt"
    path.write_text("worth the wait")

    with held_upload_slot(server):
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "upload", "--quiet", str(path)],
            cwd=ROOT,
            env=cli_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        said = process.stderr.readline()  # blocks until the CLI reports the 503
        assert "too many uploads in progress" in said
        assert "(503); retrying in 5 s (attempt 2 of 5)" in said
    # The slot is free once the held upload's connection has closed.
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started

    assert process.returncode == cli.EXIT_OK, stderr
    assert httpx.get(stdout.strip(), timeout=10).text == "worth the wait"
    assert elapsed >= 4.5  # it waited as told, not at once


def test_exit_codes_say_what_went_wrong(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"], MAX_UPLOAD_BYTES="1KiB")
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_text("small")
    big.write_bytes(b"b" * 4096)

    wrong = run_cli(server, str(small), token="not-the-right-token")
    assert wrong.returncode == cli.EXIT_REFUSED
    assert "the auth token is not valid" in wrong.stderr
    assert "not-the-right-token" not in wrong.stdout + wrong.stderr

    too_big = run_cli(server, "--json", str(big))
    assert too_big.returncode == cli.EXIT_REFUSED
    answer = json.loads(too_big.stdout)
    assert (answer["status"], answer["http_status"], answer["code"]) == ("error", 413, "too_large")

    missing = run_cli(server, str(tmp_path / "absent.txt"), str(small))
    assert missing.returncode == cli.EXIT_FILE
    assert len(missing.stdout.splitlines()) == 1  # the other file still went up

    no_token = run_cli(None, str(small))
    assert no_token.returncode == cli.EXIT_USAGE
    assert "PAIMON_TOKEN" in no_token.stderr

    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = run_cli(server, "--attempts", "2", str(small), PAIMON_URL=nobody)
    assert unreachable.returncode == cli.EXIT_NETWORK
    assert "retrying in 1 s (attempt 2 of 2)" in unreachable.stderr
    assert "after 2 attempts" in unreachable.stderr


def test_still_busy_after_every_attempt_is_its_own_exit_code(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"], MAX_CONCURRENT_UPLOADS="1")
    path = tmp_path / "never.txt"
    path.write_text("never")
    with held_upload_slot(server):
        result = run_cli(server, "--attempts", "1", str(path))
    assert result.returncode == cli.EXIT_UNAVAILABLE
    assert "too many uploads in progress" in result.stderr


def peak_rss_of(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run ``argv``; its exit code and its own peak resident memory in bytes (Linux)."""
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss * 1024
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the CLI did not finish in time")
        time.sleep(0.05)


def test_memory_stays_flat_whatever_the_file_size(live_server, tmp_path: Path) -> None:
    server = live_server([sys.executable, "server.py"])
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"s" * 1024)
    with big.open("wb") as out:  # 256 MiB of real bytes, written in pieces
        for _ in range(256):
            out.write(os.urandom(MiB))
    argv = [sys.executable, "-m", "app.cli", "upload", "--quiet"]

    small_code, small_rss = peak_rss_of([*argv, str(small)], cli_env(server))
    big_code, big_rss = peak_rss_of([*argv, str(big)], cli_env(server))

    assert (small_code, big_code) == (cli.EXIT_OK, cli.EXIT_OK)
    # Buffering the file would add 256 MiB; streaming adds a few pieces of it at most.
    print(f"CLI peak RSS: {small_rss / MiB:.1f} MiB for 1 KiB, {big_rss / MiB:.1f} MiB for 256 MiB")
    assert big_rss - small_rss < 32 * MiB, (small_rss, big_rss)
    stored = next((server.tmp / "files").rglob("big.bin"))
    assert stored.stat().st_size == big.stat().st_size


def test_an_answer_with_another_sha256_is_a_failure_of_its_own() -> None:
    answer = httpx.Response(200, json={"link": "https://x.example/f", "sha256": "00" * 32})
    with pytest.raises(cli.UploadFailed) as failure:
        cli._checked(answer, hashlib.sha256(b"sent").hexdigest())
    assert failure.value.exit_code == cli.EXIT_MISMATCH
    assert failure.value.details["link"] == "https://x.example/f"


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    in_ten = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert cli.retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7
    assert 8 <= (cli.retry_after(httpx.Response(503, headers={"Retry-After": in_ten})) or 0) <= 10
    assert cli.retry_after(httpx.Response(503)) is None


def test_resume_goes_on_after_the_client_was_killed_and_run_again(
    live_server, tmp_path: Path
) -> None:
    server = live_server([sys.executable, "server.py"])
    path = tmp_path / "long trip.bin"
    data = os.urandom(32 * MiB + 3)
    path.write_bytes(data)
    state = tmp_path / "state"
    with CuttingProxy(server.port) as proxy:
        env = cli_env(server, PAIMON_URL=proxy.url, XDG_STATE_HOME=str(state))
        proxy.up_rate = 8 * MiB  # slow enough to be stopped half way
        first = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "upload", "--resume", "--quiet", str(path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            offset = _wait_for_stored(server, state / "paimon" / "uploads.json", 8 * MiB)
        finally:
            first.kill()  # no goodbye: SIGKILL
            first.communicate(timeout=RUN_TIMEOUT_S)
        assert 8 * MiB <= offset < len(data)
        proxy.up_rate = None

        second = subprocess.run(
            [sys.executable, "-m", "app.cli", "upload", "--resume", "--json", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )

    assert second.returncode == cli.EXIT_OK, second.stderr
    assert "resuming at " in second.stderr
    answer = json.loads(second.stdout)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert httpx.get(answer["link"], timeout=30).content == data
    # Only what the first run had not stored went again.
    assert proxy.sent_up < len(data) + 8 * MiB, proxy.sent_up
    assert json.loads((state / "paimon" / "uploads.json").read_text()) == {}


def _wait_for_stored(server: ServerProcess, saved: Path, at_least: int) -> int:
    """The stored offset of the one upload in the CLI's state file, once it is ``at_least``."""
    deadline = time.monotonic() + RUN_TIMEOUT_S / 2
    while time.monotonic() < deadline:
        try:
            (url,) = json.loads(saved.read_text()).values()
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        head = httpx.head(
            server.url + httpx.URL(url).path,
            headers={"X-Auth-Token": server.env["AUTH_TOKEN"], "Tus-Resumable": "1.0.0"},
            timeout=10,
        )
        offset = int(head.headers.get("upload-offset", 0))
        if offset >= at_least:
            return offset
        time.sleep(0.05)
    raise AssertionError("the first run never stored enough")
