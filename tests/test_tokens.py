"""Named tokens from TOKENS_FILE: who may upload, reloading, refusing bad files."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.access.tokens import TokensFileError
from app.config import ConfigError, load_settings, tokens_file_error
from app.main import create_app
from tests.conftest import ROOT, tokens_toml, write_in_place
from tests.support.deploy import start_command_argv, wait_for_workers

ALICE = "alice-token-9f1c2e7a4b"
BOB = "bob-token-5d8e1f0c3a6b"
WAIT_S = 10


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(alice={"secret": ALICE}, bob={"secret": BOB}))
    return path


def upload(client, token: str, name: str = "a.txt", data: bytes = b"hello", **params):
    return client.put(
        f"/files/{name}", content=data, headers={"X-Auth-Token": token}, params=params
    )


def wait_for_status(client, token: str, status: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while (got := upload(client, token).status_code) != status:
        assert time.monotonic() < deadline, f"still {got}, expected {status}"
        time.sleep(0.2)


def test_named_tokens_upload_and_others_are_refused(make_client, tokens_file: Path) -> None:
    client = make_client(tokens_file=tokens_file)
    assert upload(client, ALICE).status_code == 200
    assert upload(client, BOB).status_code == 200
    refused = upload(client, "carol-token-never-issued")
    assert refused.status_code == 403
    assert refused.json()["code"] == "invalid_token"


def test_the_mods_auth_token_still_works_as_default(make_client, tokens_file, token) -> None:
    client = make_client(tokens_file=tokens_file)
    answer = client.post(
        "/upload?service=local", headers={"X-Auth-Token": token}, files={"file": ("m.zip", b"x")}
    )
    assert answer.status_code == 200, answer.text
    assert list(answer.json())[:5] == ["status", "message", "filename", "service", "link"]


def test_tokens_file_alone_needs_no_auth_token(make_client, tokens_file, token) -> None:
    client = make_client(tokens_file=tokens_file, auth_token=None)
    assert upload(client, ALICE).status_code == 200
    assert upload(client, token).status_code == 403


def test_without_auth_token_or_tokens_file_start_up_names_both(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    monkeypatch.delenv("TOKENS_FILE", raising=False)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None, storage_backend="local")
    assert "AUTH_TOKEN is not set" in str(error.value) and "TOKENS_FILE" in str(error.value)


def test_a_revoked_token_stops_working_without_a_restart(make_client, tokens_file) -> None:
    client = make_client(tokens_file=tokens_file)
    assert upload(client, BOB).status_code == 200
    write_in_place(tokens_file, tokens_toml(alice={"secret": ALICE}))
    wait_for_status(client, BOB, 403)
    assert upload(client, ALICE).status_code == 200


def test_a_bad_file_is_refused_in_one_line_and_the_last_good_one_stays(
    make_client, tokens_file, caplog
) -> None:
    client = make_client(tokens_file=tokens_file)
    bad = tokens_toml(alice={"secret": ALICE}, bob={"secret": BOB, "uploads_per_minute": "lots"})
    write_in_place(tokens_file, bad)
    caplog.set_level(logging.ERROR, logger="app.access.tokens")
    deadline = time.monotonic() + WAIT_S
    while not caplog.records:
        assert time.monotonic() < deadline, "the bad file was never noticed"
        assert upload(client, BOB).status_code == 200
        time.sleep(0.2)
    time.sleep(1.5)  # more checks of the unchanged bad file must not log again
    assert upload(client, BOB).status_code == 200
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line
    assert "entry 'bob'" in line and "uploads_per_minute" in line and "previous tokens" in line


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"token_sha256": "abc"}, "token_sha256 must be 64 hex digits"),
        ({"secret": ALICE, "max_upload_bytes": "2GiB"}, "larger than MAX_UPLOAD_BYTES"),
        ({"secret": ALICE, "colour": "red"}, "colour"),
        ({"secret": ALICE, "uploads_per_minute": 0}, "uploads_per_minute Input should be greater"),
        ({}, "exactly one of token_sha256 or token"),
    ],
)
def test_a_bad_file_stops_start_up_naming_entry_and_problem(
    make_settings, tmp_path: Path, entry: dict, problem: str
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(uploader=entry))
    with pytest.raises(TokensFileError) as error:
        create_app(make_settings(tokens_file=path))
    assert "entry 'uploader'" in str(error.value) and problem in str(error.value)
    assert str(tokens_file_error(error.value)).startswith("TOKENS_FILE entry 'uploader': ")


def test_a_plain_token_works_with_a_warning(make_client, tmp_path: Path, caplog) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(dev={"token": ALICE}))
    with caplog.at_level(logging.WARNING, logger="app.access.tokens"):
        client = make_client(tokens_file=path)
    assert upload(client, ALICE).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("entry 'dev' has a plain token" in w and "token_sha256" in w for w in warnings)
    assert not any(ALICE in w for w in warnings)


def uploaded_files(root: Path) -> list[Path]:
    """The uploaded files: each in a folder of its own (records and locks are not)."""
    return [p for p in root.glob("*/*") if p.is_file() and len(p.parent.name) == 22]


def test_max_upload_bytes_is_413_before_anything_is_stored(make_client, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(small={"secret": ALICE, "max_upload_bytes": "1KB"}))
    client = make_client(tokens_file=path)
    headers = {"X-Auth-Token": ALICE}
    assert upload(client, ALICE, data=b"x" * 1000).status_code == 200
    declared = upload(client, ALICE, data=b"x" * 1001)
    assert declared.status_code == 413 and "1000 bytes" in declared.json()["message"]

    def chunks():  # no Content-Length: cut while it arrives
        for _ in range(100):
            yield b"x" * 100

    streamed = client.put("/files/s.bin", content=chunks(), headers=headers)
    assert streamed.status_code == 413
    stored = uploaded_files(tmp_path / "files")
    assert len(stored) == 1


def test_a_multipart_file_part_is_capped_at_the_callers_limit(make_client, tmp_path) -> None:
    """The file part itself, not the body with its framing: limit + 1 bytes is 413."""
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(small={"secret": ALICE, "max_upload_bytes": "1KB"}))
    client = make_client(tokens_file=path)
    headers = {"X-Auth-Token": ALICE}
    fits = client.post("/upload", headers=headers, files={"file": ("f.bin", b"x" * 1000)})
    assert fits.status_code == 200, fits.text
    over = client.post("/upload", headers=headers, files={"file": ("f.bin", b"x" * 1001)})
    assert over.status_code == 413 and "1000 bytes" in over.json()["message"]
    assert over.headers["connection"] == "close"

    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="c.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"y" * 1001
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunked():  # no Content-Length: the part is counted while it arrives
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    streamed = client.post(
        "/upload",
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=chunked(),
    )
    assert streamed.status_code == 413
    stored = uploaded_files(tmp_path / "files")
    assert [p.stat().st_size for p in stored] == [1000]


def test_services_limit_which_backends_a_token_may_use(make_client, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(mega_only={"secret": ALICE, "services": ["mega"]}))
    client = make_client(tokens_file=path)
    answer = upload(client, ALICE)
    assert answer.status_code == 403
    assert answer.json()["code"] == "service_not_allowed"


def test_new_token_appended_with_shell_redirection_works_and_the_file_holds_no_secret(
    live_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(alice={"secret": ALICE}))
    server = live_server(TOKENS_FILE=str(path))
    # As README shows it: stdout appended to the file, the token read from the terminal.
    made = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m app.access.tokens new-token ci-bot >> "{path}"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert made.stdout == "" and made.stderr.strip(), "the token goes to stderr only"
    token = made.stderr.split()[-1]
    assert len(token) >= 40
    text = path.read_text()
    assert token not in text, "the file must hold the digest only"
    assert re.search(r'^\[tokens\.ci-bot\]\ntoken_sha256 = "[0-9a-f]{64}"$', text, re.M)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        wait_for_status(http, token, 200)
        assert upload(http, ALICE).status_code == 200


def answers_of(server, pid: int) -> dict[str, int]:
    """Upload status per client (``alice``, ``bob``) from the JSON lines worker ``pid`` wrote;
    the client is told by the request id it sent."""
    answers = {}
    for line in server.log().splitlines():
        if line.startswith("{") and '"upload"' in line:
            entry = json.loads(line)
            if entry["pid"] == pid:
                answers[entry["request_id"].split("-")[0]] = entry["upload"]["status"]
    return answers


def served_by(server, http: httpx.Client, pid: int) -> dict[str, int]:
    """Upload with ALICE and BOB until worker ``pid`` has answered both; its answers."""
    deadline = time.monotonic() + WAIT_S
    for attempt in itertools.count():
        if len(answers := answers_of(server, pid)) == 2:
            return answers
        assert time.monotonic() < deadline, f"worker {pid} never answered both: {answers}"
        for name, token in [("alice", ALICE), ("bob", BOB)]:
            # A fresh connection each time, so that either worker may take it.
            headers = {"X-Auth-Token": token, "X-Request-ID": f"{name}-{attempt}"}
            http.put("/files/a.txt", content=b"a", headers={**headers, "Connection": "close"})
        time.sleep(0.05)
    raise AssertionError("unreachable")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_bad_file_never_stops_gunicorn_and_new_workers_keep_the_last_good_tokens(
    live_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(alice={"secret": ALICE}, bob={"secret": BOB}))
    server = live_server(
        start_command_argv("{port}"),
        TOKENS_FILE=str(path),
        AUTH_TOKEN=None,
        WEB_CONCURRENCY="2",
        LOG_FORMAT="json",
        AUTH_FAILURES_PER_MINUTE="1000",  # Bob's refusals must not brake Alice
    )
    master = server.process.pid
    first = wait_for_workers(master, 2, set())
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        # Bob is revoked by an edit only the workers see (no SIGHUP) ...
        write_in_place(path, tokens_toml(alice={"secret": ALICE}))
        wait_for_status(http, BOB, 403)
        # ... and the next edit is a mistake.
        bad = tokens_toml(alice={"secret": ALICE, "uploads_per_minute": "lots"})
        write_in_place(path, bad)

        # SIGHUP: gunicorn replaces every worker while the file is bad.
        server.process.send_signal(signal.SIGHUP)
        after_hup = wait_for_workers(master, 2, first)
        for pid in after_hup:
            assert served_by(server, http, pid) == {"alice": 200, "bob": 403}

        # A worker killed outright is replaced while the file is still bad.
        killed = min(after_hup)
        os.kill(killed, signal.SIGKILL)
        (replacement,) = wait_for_workers(master, 2, {killed}) - after_hup
        assert served_by(server, http, replacement) == {"alice": 200, "bob": 403}
    assert server.process.poll() is None, "the master must keep running"
    refusals = [line for line in server.log().splitlines() if "TOKENS_FILE refused" in line]
    assert len(refusals) >= 3 and all("uploads_per_minute" in line for line in refusals)
    assert "exited with code 3" not in server.log()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_a_change_the_file_check_cannot_see(live_server, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(client={"secret": ALICE}))
    server = live_server(TOKENS_FILE=str(path))
    before = os.stat(path)
    # Same size, same inode, same modification time: only a signal can tell.
    write_in_place(path, tokens_toml(client={"secret": BOB}))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        time.sleep(1.5)
        assert upload(http, ALICE).status_code == 200
        server.process.send_signal(signal.SIGHUP)
        wait_for_status(http, BOB, 200)
        assert upload(http, ALICE).status_code == 403
    assert server.process.poll() is None


def test_a_revoked_token_stops_working_on_every_running_instance(live_server, tmp_path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(alice={"secret": ALICE}, bob={"secret": BOB}))
    servers = [
        live_server(TOKENS_FILE=str(path), TEMP_UPLOAD_DIR=str(tmp_path / f"spool-{i}"))
        for i in range(2)
    ]
    clients = [httpx.Client(base_url=server.url, timeout=WAIT_S) for server in servers]
    try:
        assert [upload(http, BOB).status_code for http in clients] == [200, 200]
        write_in_place(path, tokens_toml(alice={"secret": ALICE}))
        for http in clients:
            wait_for_status(http, BOB, 403)
            assert upload(http, ALICE).status_code == 200
    finally:
        for http in clients:
            http.close()
    assert all(server.process.poll() is None for server in servers)
