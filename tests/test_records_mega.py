"""Upload records on MEGA, end to end: real server processes against the MEGA emulator
(and a real Redis where instances share one).

MEGA is the record: everything the service knows about an upload is read back from the
node's custom attributes, the way MEGA's own SDK reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from Crypto.Cipher import AES

from tests.conftest import ROOT, EmulatorOptions, RedisServer, ServerProcess, start_server
from tests.mega_emulator import MegaEmulator
from tests.mega_emulator.api import sdk_custom_attributes, sdk_parse_attributes
from tests.mega_verify import b64url_decode, parse_link, split_key, verify
from tests.support.metrics import samples, value
from tests.support.records import (
    HTTP_TIMEOUT,
    Tokens,
    auth,
    curl,
    digest_field,
    listed,
    put_expecting_continue,
    wait_for_index,
)

EMAIL, PASSWORD = "records@example.com", "emulated records password"
KiB, MiB = 1024, 1024 * 1024
# Expired uploads go within the sweep interval; on a busy machine allow a few seconds more.
SLACK_S = 15
# One emulator for the module; each test has a MEGA folder of its own (``service``).
MEGA_EMULATOR = EmulatorOptions(seed=18, accounts=((EMAIL, PASSWORD),), fresh_per_test=False)


@pytest.fixture
def tokens() -> Tokens:
    return Tokens.fresh()


@pytest.fixture
def service(
    emulator: MegaEmulator, tmp_path: Path, tokens: Tokens, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ServerProcess]]:
    """Start service processes on the emulator; each test has a MEGA folder of its own."""
    started: list[ServerProcess] = []
    folder = f"Records/{request.node.name[:60]}"
    tokens_file = tokens.write(tmp_path / "tokens.toml")

    def start(name: str = "server", **env: str | None) -> ServerProcess:
        base = tmp_path / name
        base.mkdir()
        settings: dict[str, str | None] = {
            "STORAGE_BACKEND": "mega",
            "MEGA_API_URL": emulator.url,
            "MEGA_EMAIL": EMAIL,
            "MEGA_PASSWORD": PASSWORD,
            "MEGA_FOLDER": folder,
            "MEGA_RETRY_INITIAL_SECONDS": "0.01",
            "MEGA_RETRY_MAX_SECONDS": "0.1",
            "TOKENS_FILE": str(tokens_file),
            "LOG_LEVEL": "info",
            **env,
        }
        server = start_server(base, settings)
        started.append(server)
        wait_for_index(server.url, tokens.manager)
        return server

    yield start
    for server in started:
        server.stop()


def put(server: ServerProcess, token: str, name: str, data: bytes, **params: Any) -> Any:
    response = httpx.put(
        f"{server.url}/files/{name}", headers=auth(token), content=data, params=params,
        timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def post(server: ServerProcess, token: str, name: str, data: bytes) -> Any:
    """The game mod's request: multipart POST /upload?service=mega with X-Auth-Token."""
    response = httpx.post(
        f"{server.url}/upload",
        params={"service": "mega"},
        headers=auth(token),
        files={"file": (name, data, "application/octet-stream")},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return response.json()


def resolves(emulator: MegaEmulator, link: str) -> bool:
    """Whether MEGA still serves the file behind a public link."""
    public_handle, _ = parse_link(link)
    answer = requests.post(
        f"{emulator.url}/cs",
        # A fresh request id: MEGA answers a repeated one from its cache.
        params={"id": secrets.token_hex(6)},
        data=json.dumps([{"a": "g", "p": public_handle}]),
        timeout=HTTP_TIMEOUT,
    ).json()
    return isinstance(answer, list) and isinstance(answer[0], dict)


def file_nodes(emulator: MegaEmulator) -> int:
    return int(emulator.stats()["stored_files"])


def commands(emulator: MegaEmulator, name: str) -> int:
    return int(emulator.stats()["commands"].get(name, 0))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- permissions ---------------------------------------------------------------------


def test_three_tokens_upload_and_each_may_do_only_what_its_flags_say(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    # No PUBLIC_BASE_URL on a MEGA deploy: the delete URL is a path on this service.
    server = service(PUBLIC_BASE_URL=None)
    default = server.env["AUTH_TOKEN"]
    up = put(server, tokens.uploader, "up.bin", payload(1000, 1))
    mine = put(server, tokens.lister, "mine.bin", payload(2000, 2))
    boss = put(server, tokens.manager, "boss.bin", payload(3000, 3))
    mod = post(server, default, "mod.bin", payload(4000, 4))
    assert mod["delete_url"].startswith(f"/delete/{mod['id']}/")
    # The game mod's contract: the same keys first, then the new ones.
    assert list(mod)[:5] == ["status", "message", "filename", "service", "link"]
    assert mod["id"] == mod["handle"] and mod["expires_at"] is None

    # AUTH_TOKEN and a token without flags may only upload: no list, no delete, no links.
    for token in (default, tokens.uploader):
        for method, path in [
            ("GET", "/uploads"),
            ("DELETE", f"/uploads/{mine['id']}"),
            ("DELETE", f"/uploads/{mine['id']}/link"),
            ("POST", f"/uploads/{mine['id']}/link"),
        ]:
            refused = httpx.request(method, server.url + path, headers=auth(token))
            assert refused.status_code == 403, (method, path, refused.text)
            assert refused.json()["code"] == "may_not_list"
    assert resolves(emulator, mine["link"])

    # can_list: its own uploads only, whatever it asks for.
    own = listed(server.url, tokens.lister)
    assert [(row["id"], row["token"]) for row in own] == [(mine["id"], "lister")]
    assert own[0]["sha256"] == hashlib.sha256(payload(2000, 2)).hexdigest()
    assert listed(server.url, tokens.lister, token="uploader") == []
    others = httpx.delete(f"{server.url}/uploads/{up['id']}", headers=auth(tokens.lister))
    assert others.status_code == 404
    assert resolves(emulator, up["link"])
    gone = httpx.delete(f"{server.url}/uploads/{mine['id']}", headers=auth(tokens.lister))
    assert gone.status_code == 200 and gone.json()["removed"] == "file"
    assert not resolves(emulator, mine["link"])

    # can_manage: everyone's uploads, their links and their files.
    everything = listed(server.url, tokens.manager)
    assert {row["token"] for row in everything} == {"uploader", "manager", "default"}
    assert [row["token"] for row in listed(server.url, tokens.manager, token="default")] == [
        "default"
    ]
    revoked = httpx.delete(f"{server.url}/uploads/{up['id']}/link", headers=auth(tokens.manager))
    assert revoked.status_code == 200 and revoked.json()["link"] is None
    assert not resolves(emulator, up["link"])
    renewed = httpx.post(f"{server.url}/uploads/{up['id']}/link", headers=auth(tokens.manager))
    assert renewed.status_code == 200 and renewed.json()["link"] != up["link"]
    verify(emulator.url, renewed.json()["link"], payload(1000, 1), name="up.bin")
    deleted = httpx.delete(f"{server.url}/uploads/{boss['id']}", headers=auth(tokens.manager))
    assert deleted.status_code == 200
    assert not resolves(emulator, boss["link"])
    assert {row["id"] for row in listed(server.url, tokens.manager)} == {up["id"], mod["id"]}


# -- the uploader's delete URL --------------------------------------------------------


def test_the_delete_url_removes_file_and_link_once_and_is_never_logged(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    server = service()
    nodes = file_nodes(emulator)
    data = payload(300 * KiB, 5)
    # A client choosing the Host header does not choose where the delete URL points.
    answer = httpx.put(
        f"{server.url}/files/gone.bin",
        headers={**auth(tokens.uploader), "Host": "evil.example"},
        content=data,
        timeout=HTTP_TIMEOUT,
    ).json()
    delete_url = answer["delete_url"]
    assert delete_url.startswith(f"{server.env['PUBLIC_BASE_URL']}/delete/{answer['id']}/")
    secret = delete_url.rsplit("/", 1)[1]
    verify(emulator.url, answer["link"], data)

    wrong = delete_url[: -len(secret)] + "x" * len(secret)
    refused = curl("-X", "DELETE", wrong)
    assert refused.status == 404 and refused.body["code"] == "not_found"
    assert resolves(emulator, answer["link"])
    # A key that does not open the file is refused alike, and hides it from nobody.
    base, key, _ = delete_url.rsplit("/", 2)
    wrong_key = f"{base}/{'A' * len(key)}/{secret}"
    refused = curl("-X", "DELETE", wrong_key)
    assert refused.status == 404 and refused.body["code"] == "not_found"
    assert answer["id"] in [row["id"] for row in listed(server.url, tokens.manager)]

    deleted = curl("-X", "DELETE", delete_url)  # no token: the URL is the credential
    assert deleted.status == 200 and deleted.body["removed"] == "file"
    assert not resolves(emulator, answer["link"])
    assert file_nodes(emulator) == nodes
    again = curl("-X", "DELETE", delete_url)
    assert again.status == 404 and again.body["code"] == "not_found"

    log = server.log()
    assert f"/delete/{answer['id']}/[redacted]" in log  # the access log has the line ...
    assert secret not in log  # ... without the secret


# -- expiry --------------------------------------------------------------------------


def test_expired_uploads_go_within_the_sweep_interval_across_two_instances_once(
    service: Callable[..., ServerProcess],
    emulator: MegaEmulator,
    tokens: Tokens,
    redis_server: RedisServer,
) -> None:
    shared = {"REDIS_URL": redis_server.url, "SWEEP_INTERVAL_SECONDS": "1"}
    first, second = service("first", **shared), service("second", **shared)
    kept = put(first, tokens.uploader, "kept.bin", payload(1000, 6))
    short = put(first, tokens.lister, "short.bin", payload(1000, 7), expires_in=2)
    longer = put(second, tokens.manager, "longer.bin", payload(1000, 8), expires_in=4)
    uploaded = time.monotonic()
    assert short["expires_at"] and longer["expires_at"]
    deletes_before = commands(emulator, "d")

    deadline = uploaded + 4 + 1 + SLACK_S
    while resolves(emulator, short["link"]) or resolves(emulator, longer["link"]):
        assert time.monotonic() < deadline, "expired uploads were not swept in time"
        time.sleep(0.2)
    # Both instances sweep every second; each file was deleted once.
    time.sleep(2)
    assert commands(emulator, "d") - deletes_before == 2
    assert resolves(emulator, kept["link"])
    for server in (first, second):
        assert [row["id"] for row in listed(server.url, tokens.manager)] == [kept["id"]]


def test_the_sweep_command_finishes_what_a_killed_sweep_left_and_spares_the_rest(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    server = service(SWEEP_INTERVAL_SECONDS="86400")  # this test sweeps by command only
    expiring = [
        put(server, tokens.uploader, f"e{i}.bin", payload(500, 20 + i), expires_in=1)
        for i in range(6)
    ]
    kept = [put(server, tokens.uploader, f"k{i}.bin", payload(500, 40 + i)) for i in range(3)]
    later = put(server, tokens.uploader, "later.bin", payload(500, 50), expires_in=3600)
    server.stop()
    time.sleep(1.5)
    env = {**server.env, "LOG_LEVEL": "warning"}

    emulator.faults.api_delay = 0.3  # slow enough to be killed half-way
    sweeper = subprocess.Popen(
        [sys.executable, "server.py", "sweep"], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while commands(emulator, "d") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(sweeper.pid, signal.SIGKILL)
    sweeper.wait(timeout=10)
    emulator.faults.reset()
    assert any(resolves(emulator, upload["link"]) for upload in expiring), "not killed mid-way"
    for upload in [*kept, later]:
        assert resolves(emulator, upload["link"]), "a sweep deleted an upload that had not expired"

    finished = subprocess.run(
        [sys.executable, "server.py", "sweep"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert "sweep done" in finished.stdout
    assert not any(resolves(emulator, upload["link"]) for upload in expiring)
    assert all(resolves(emulator, upload["link"]) for upload in [*kept, later])


# -- dedup and digests -----------------------------------------------------------------


def test_the_same_bytes_from_two_tokens_make_one_node_and_deleting_one_keeps_the_other(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    server = service()
    nodes = file_nodes(emulator)
    data = payload(2 * MiB + 17, 9)
    source = server.tmp / "same.bin"
    source.write_bytes(data)
    # A multipart POST streamed into MEGA while it arrives, then a PUT of the same bytes.
    first = curl("-H", f"X-Auth-Token: {tokens.uploader}", "-F", f"file=@{source}",
                 f"{server.url}/upload?service=mega")  # fmt: skip
    assert first.status == 200, first.body
    assert file_nodes(emulator) == nodes + 1
    nodes_made = commands(emulator, "p")
    second = put(server, tokens.lister, "other-name.bin", data)
    assert file_nodes(emulator) == nodes + 1
    assert commands(emulator, "p") == nodes_made  # no 'p' for the second: no second node
    assert (second["id"], second["link"]) == (first.body["id"], first.body["link"])
    assert second["filename"] == "same.bin"  # the stored file's name
    assert second["delete_url"] != first.body["delete_url"]

    assert curl("-X", "DELETE", first.body["delete_url"]).body["removed"] == "uploads"
    verify(emulator.url, second["link"], data, name="same.bin")
    assert [row["token"] for row in listed(server.url, tokens.manager)] == ["lister"]
    assert curl("-X", "DELETE", second["delete_url"]).body["removed"] == "file"
    assert not resolves(emulator, second["link"])
    assert file_nodes(emulator) == nodes


def test_a_declared_digest_with_expect_100_continue_sends_no_body_byte(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    server = service()
    data = payload(2 * MiB, 10)
    stored = put(server, tokens.manager, "big.bin", data)
    nodes = file_nodes(emulator)
    emulator.reset_stats()
    headers = {**auth(tokens.lister), "Repr-Digest": digest_field(data)}

    raw = put_expecting_continue(server.port, "/files/again.bin", dict(headers), data)
    assert raw.interim == [] and raw.body_bytes_sent == 0
    assert raw.status == 200, raw.body
    answer = json.loads(raw.body)
    assert (answer["id"], answer["link"]) == (stored["id"], stored["link"])
    assert answer["delete_url"] and answer["delete_url"] != stored["delete_url"]
    assert commands(emulator, "u") == 0  # nothing was even prepared at MEGA

    source = server.tmp / "again.bin"
    source.write_bytes(data)
    digest = f"Paimon-File-Digest: {digest_field(data)}"
    by_curl = curl("-H", f"X-Auth-Token: {tokens.lister}", "-H", digest,
                   "-F", f"file=@{source}", f"{server.url}/upload?service=mega")  # fmt: skip
    assert by_curl.status == 200 and by_curl.uploaded == 0
    assert by_curl.body["link"] == stored["link"]

    # A token that may not list must send the bytes: knowing a digest is not having them.
    proof = {**auth(tokens.uploader), "Repr-Digest": digest_field(data)}
    sent = put_expecting_continue(server.port, "/files/proof.bin", proof, data)
    assert sent.interim and sent.body_bytes_sent == len(data)
    assert sent.status == 200 and json.loads(sent.body)["link"] == stored["link"]
    assert file_nodes(emulator) == nodes


def test_a_wrong_digest_stores_nothing(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    server = service()
    nodes = file_nodes(emulator)
    emulator.reset_stats()
    data, other = payload(200 * KiB, 11), payload(10, 12)
    wrong = httpx.put(
        f"{server.url}/files/wrong.bin",
        headers={**auth(tokens.lister), "Repr-Digest": digest_field(other)},
        content=data,
        timeout=HTTP_TIMEOUT,
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "digest_mismatch"
    assert hashlib.sha256(other).hexdigest() in wrong.json()["message"]
    form = httpx.post(
        f"{server.url}/upload",
        headers={**auth(tokens.uploader), "Paimon-File-Digest": digest_field(other)},
        files={"file": ("wrong.bin", data)},
        timeout=HTTP_TIMEOUT,
    )
    assert form.status_code == 400 and form.json()["code"] == "digest_mismatch"
    malformed = httpx.put(
        f"{server.url}/files/bad.bin",
        headers={**auth(tokens.uploader), "Repr-Digest": "sha-256=:not base64:"},
        content=data,
    )
    assert malformed.status_code == 400 and malformed.json()["code"] == "invalid_digest"
    assert commands(emulator, "p") == 0 and file_nodes(emulator) == nodes
    assert listed(server.url, tokens.manager) == []
    right = httpx.put(
        f"{server.url}/files/right.bin",
        headers={**auth(tokens.uploader), "Repr-Digest": digest_field(data)},
        content=data,
        timeout=HTTP_TIMEOUT,
    )
    assert right.status_code == 200
    verify(emulator.url, right.json()["link"], data, name="right.bin")


# -- MEGA is the record -------------------------------------------------------------------


def test_a_fresh_disk_with_redis_flushed_still_lists_everything_with_token_and_sha256(
    service: Callable[..., ServerProcess],
    emulator: MegaEmulator,
    tokens: Tokens,
    redis_server: RedisServer,
) -> None:
    first = service("first", REDIS_URL=redis_server.url)
    uploads = [
        (put(first, tokens.uploader, "a.bin", payload(100, 13)), "uploader", None),
        (put(first, tokens.lister, "b.bin", payload(200, 14), expires_in=86400), "lister", 1),
        (post(first, first.env["AUTH_TOKEN"], "c.bin", payload(300, 15)), "default", None),
    ]
    first.stop()
    _flush(redis_server)

    def check(server: ServerProcess) -> None:
        rows = {row["id"]: row for row in listed(server.url, tokens.manager)}
        assert len(rows) == 3
        for answer, token, expires in uploads:
            row = rows[answer["id"]]
            assert row["token"] == token
            assert row["sha256"] == answer["sha256"]
            assert row["link"] == answer["link"]
            assert (row["expires_at"] is not None) == bool(expires)

    check(service("after-flush", REDIS_URL=redis_server.url))
    check(service("without-redis"))  # and from MEGA alone, with no Redis at all


def _flush(redis: RedisServer) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(16).startswith(b"+OK")


def test_records_decode_as_the_sdk_reads_them_and_survive_other_apps_edits(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    server = service()
    name, data = "résumé 报告.txt", payload(5000, 16)
    first = put(server, tokens.uploader, name, data, expires_in=3600)
    handle = first["id"]
    # Another app edits the node: the web client writes numbers (fav, lbl) into the block
    # and keeps the attributes it does not know (js/crypto.js, crypto_makeattr).
    _edit_attributes(emulator, first["link"], handle, {"fav": 1, "lbl": 2})
    second = put(server, tokens.lister, "again.txt", data)  # rewrites the record (dedup)
    assert second["id"] == handle

    read = emulator.sdk_attributes(handle)
    assert read is not None
    custom = [key for key in read if key.startswith("_")]
    assert custom and all(len(key.encode()) <= 8 for key in custom)
    assert read["n"].decode() == name and name in emulator.sdk_names(EMAIL)
    assert read["fav"] == b"1" and read["lbl"] == b"2"
    fields = sdk_custom_attributes(read)
    assert fields["psha"] == hashlib.sha256(data).hexdigest()
    references = [ref.split(":") for ref in fields["prefs"].split()]
    assert [(ref[0], bool(ref[2])) for ref in references] == [("uploader", True), ("lister", False)]


def _edit_attributes(emulator: MegaEmulator, link: str, handle: str, extra: dict[str, Any]) -> None:
    """Rewrite a node's attribute block as another MEGA app would: decrypt, add, encrypt."""
    aes_key, _, _ = split_key(parse_link(link)[1])
    with emulator.store.lock:
        node = emulator.store.nodes[handle]
        plain = AES.new(aes_key, AES.MODE_CBC, bytes(16)).decrypt(b64url_decode(node.attributes))
        attributes = json.loads(plain.rstrip(b"\0")[4:])
        text = b"MEGA" + json.dumps({**attributes, **extra}, ensure_ascii=False).encode()
        text += b"\0" * (-len(text) % 16)
        block = AES.new(aes_key, AES.MODE_CBC, bytes(16)).encrypt(text)
        node.attributes = _b64url(block)


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_the_sdk_reader_packs_names_into_8_bytes_and_stops_at_a_boolean() -> None:
    """Why records use ``_`` + at most 7 bytes and string values only."""
    long_name = sdk_parse_attributes(b'"_expiresAt":"1","n":"a.txt"}')
    assert long_name == {"xpiresAt": b"1", "n": b"a.txt"}  # the leading bytes are lost
    flag = sdk_parse_attributes(b'"_kept":true,"n":"a.txt"}')
    assert flag == {"_kept": b""}  # the name after it is gone
    assert sdk_parse_attributes(b'"fav":1,"_pv":"1","n":"a"}') == {
        "fav": b"1",
        "_pv": b"1",
        "n": b"a",
    }
    escaped = sdk_parse_attributes(b'"n":"r\\u00e9sum\\u00e9"}')
    assert escaped["n"] == b"r\xe9sum\xe9"  # a \u escape keeps its low byte only


# -- quota before bytes ---------------------------------------------------------------------


def test_an_upload_bigger_than_the_free_space_is_507_before_a_byte_goes_to_mega(
    service: Callable[..., ServerProcess], emulator: MegaEmulator, tokens: Tokens
) -> None:
    account = emulator.store.accounts[EMAIL]
    emulator.faults.storage_quota_bytes = emulator.store.used_bytes(account) + 512 * KiB
    server = service()
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["status"] == "ready"
    assert ready["storage"]["total_bytes"] == emulator.faults.storage_quota_bytes
    assert ready["storage"]["free_bytes"] == 512 * KiB
    found = samples(httpx.get(f"{server.url}/metrics").text)
    assert value(found, "paimon_storage_total_bytes") == emulator.faults.storage_quota_bytes
    assert value(found, "paimon_storage_used_bytes") == ready["storage"]["used_bytes"]
    emulator.reset_stats()

    data = payload(MiB, 17)
    raw = put_expecting_continue(server.port, "/files/big.bin", auth(tokens.uploader), data)
    assert raw.status == 507 and json.loads(raw.body)["code"] == "storage_full"
    assert raw.interim == [] and raw.body_bytes_sent == 0
    source = server.tmp / "big.bin"
    source.write_bytes(payload(2 * MiB, 18))
    form = curl("-H", f"X-Auth-Token: {tokens.uploader}", "-F", f"file=@{source}",
                f"{server.url}/upload?service=mega")  # fmt: skip
    assert form.status == 507 and form.uploaded == 0
    stats = emulator.stats()
    assert stats["commands"].get("u", 0) == 0 and stats.get("chunk_posts", 0) == 0

    small = put(server, tokens.uploader, "small.bin", payload(100 * KiB, 19))
    verify(emulator.url, small["link"], payload(100 * KiB, 19))
    after = httpx.get(f"{server.url}/ready").json()["storage"]
    assert after["free_bytes"] == 512 * KiB - 100 * KiB  # own writes count at once
