"""The MEGA emulator against the unmodified mega.py client, plus its faults."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from mega.errors import RequestError

from tests.conftest import EmulatorOptions
from tests.mega_emulator import MegaEmulator, verify_hashcash
from tests.mega_emulator.codec import b64url_decode, b64url_encode
from tests.mega_emulator.stock_client import EmulatedMega

TIMEOUT = 30
REPO_ROOT = Path(__file__).resolve().parent.parent
EMAIL, PASSWORD = "user@example.com", "correct horse"


MEGA_EMULATOR = EmulatorOptions(seed=7, avoid_dash_in_handles=True)
_REQUEST_IDS = itertools.count(1)


@pytest.fixture(autouse=True)
def _mega_py_download_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # mega.py downloads with requests.get and no timeout; give it one.
    monkeypatch.setattr(requests, "get", functools.partial(requests.get, timeout=TIMEOUT))


def api(
    emu: MegaEmulator,
    commands: list[dict[str, Any]],
    sid: str | None = None,
    headers: dict[str, str] | None = None,
    ident: str | None = None,
) -> requests.Response:
    # A fresh id per request unless one is given, as MEGA's clients send: MEGA answers a
    # repeated id from its cache (src/request.cpp in the SDK).
    params = {"id": ident or str(next(_REQUEST_IDS))}
    if sid:
        params["sid"] = sid
    return requests.post(
        f"{emu.url}/cs", params=params, data=json.dumps(commands), headers=headers, timeout=TIMEOUT
    )


def login(emu: MegaEmulator, email: str = EMAIL, password: str = PASSWORD) -> EmulatedMega:
    return EmulatedMega(emu.url, timeout=TIMEOUT).login(email, password)


# -- mega.py round trips ---------------------------------------------------------


def test_v2_account_round_trip_with_mega_py(emulator: MegaEmulator, tmp_path: Path) -> None:
    emulator.add_account(EMAIL, PASSWORD, version=2)
    prelogin = api(emulator, [{"a": "us0", "user": EMAIL}]).json()[0]
    assert prelogin["v"] == 2 and len(b64url_decode(prelogin["s"])) == 16

    m = login(emulator, EMAIL.upper(), PASSWORD)  # clients lower-case the address
    assert m.sid in emulator.store.sessions  # the sid derived from csid is the one issued
    assert emulator.stats()["logins_ok"] == 1

    folder = m.create_folder("backups")["backups"]
    payload = os.urandom(300 * 1024 + 5)  # several chunks, last one > 16 bytes
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    uploaded = m.upload(str(source), folder)
    handle = uploaded["f"][0]["h"]
    assert len(handle) == 8 and "-" not in handle

    found = m.find("payload.bin")
    assert found is not None and found[0] == handle and found[1]["p"] == folder
    assert found[1]["s"] == len(payload)

    link = m.export("payload.bin")
    public = emulator.public_handle(handle)
    assert public and public in link

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    downloaded = m.download_url(link, dest_path=str(out_dir))  # checks the MAC
    assert Path(downloaded).read_bytes() == payload

    # The public download URL serves exactly the stored ciphertext.
    info = api(emulator, [{"a": "g", "g": 1, "p": public}]).json()[0]
    assert info["s"] == len(payload)
    served = requests.get(info["g"], timeout=TIMEOUT).content
    assert served == emulator.read_ciphertext(handle) and served != payload

    stats = emulator.stats()
    assert stats["files_stored"] == 1 and stats["uploads_completed"] == 1
    assert stats["chunk_posts"] >= 2 and stats["commands"]["p"] == 2

    assert m.destroy(handle) == 0
    assert m.find("payload.bin") is None
    with pytest.raises(KeyError):
        emulator.read_ciphertext(handle)


def test_v1_account_logs_in_and_reads_quota(emulator: MegaEmulator, tmp_path: Path) -> None:
    emulator.add_account("old@example.com", "legacy", version=1)
    assert api(emulator, [{"a": "us0", "user": "old@example.com"}]).json() == [{"v": 1}]
    m = login(emulator, "old@example.com", "legacy")
    assert m.get_user()["email"] == "old@example.com"
    space = m.get_storage_space()
    assert space["used"] == 0 and space["total"] == emulator.faults.storage_quota_bytes

    source = tmp_path / "small.txt"
    source.write_bytes(b"hello emulator, this is more than sixteen bytes")
    m.upload(str(source))
    assert m.get_storage_space()["used"] == source.stat().st_size
    assert m.get_files_in_node(2)  # the upload sits in the cloud drive root

    # Private download ('g' by node handle), rename ('a') and move to the rubbish ('m').
    found = m.find("small.txt")
    assert found is not None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert Path(m.download(found, dest_path=str(out_dir))).read_bytes() == source.read_bytes()
    assert m.rename(found, "renamed.txt") == 0
    renamed = m.find("renamed.txt")
    assert renamed is not None and renamed[0] == found[0] and m.find("small.txt") is None
    assert m.delete(found[0]) == 0
    assert emulator.node(found[0])["p"] == m.get_node_by_type(4)[0]


def test_wrong_password_unknown_user_and_blocked_account(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    with pytest.raises(RequestError) as wrong:
        login(emulator, EMAIL, "wrong password")
    assert wrong.value.code == -9
    emulator.add_account("blocked@example.com", PASSWORD, blocked=True)
    with pytest.raises(RequestError) as blocked:
        login(emulator, "blocked@example.com", PASSWORD)
    assert blocked.value.code == -16
    assert emulator.stats()["logins_failed"] == 2 and emulator.stats()["logins_ok"] == 0


# -- hashcash ---------------------------------------------------------------------


def solve_hashcash(token: str, easiness: int, max_attempts: int = 200) -> str:
    """Reference solver: try 4-byte prefixes until the digest is under the threshold."""
    threshold = (((easiness & 63) << 1) + 1) << ((easiness >> 6) * 7 + 3)
    raw = b64url_decode(token)
    raw += b"\0" * (-len(raw) % 16)
    repeated = raw * 262144
    for counter in range(max_attempts):
        prefix = counter.to_bytes(4, "big")
        digest = hashlib.sha256(prefix + repeated).digest()
        if int.from_bytes(digest[:4], "big") <= threshold:
            return b64url_encode(prefix)
    raise AssertionError("no hashcash solution found")


def failing_prefix(token: str, easiness: int) -> str:
    threshold = (((easiness & 63) << 1) + 1) << ((easiness >> 6) * 7 + 3)
    repeated = b64url_decode(token) * 262144
    for counter in range(200):
        prefix = counter.to_bytes(4, "big")
        if int.from_bytes(hashlib.sha256(prefix + repeated).digest()[:4], "big") > threshold:
            return b64url_encode(prefix)
    raise AssertionError("every prefix passes")


def test_hashcash_verify_accepts_solution_and_rejects_wrong_answer() -> None:
    token = b64url_encode(os.urandom(48))
    easiness = 255  # about one prefix in two passes: solves in a few hashes
    started = time.monotonic()
    answer = solve_hashcash(token, easiness)
    assert time.monotonic() - started < 5
    assert verify_hashcash(token, answer, easiness)
    assert not verify_hashcash(token, failing_prefix(token, easiness), easiness)
    assert not verify_hashcash(b64url_encode(os.urandom(48)), answer, 0)


def test_login_hashcash_challenge_and_retry(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    emulator.faults.hashcash_easiness = 255
    # us0 is not challenged; us is.
    assert api(emulator, [{"a": "us0", "user": EMAIL}]).status_code == 200
    first = api(emulator, [{"a": "us", "user": EMAIL, "uh": "x"}])
    assert first.status_code == 402
    version, easiness, _timestamp, token = first.headers["X-Hashcash"].split(":")
    assert (version, easiness) == ("1", "255") and len(b64url_decode(token)) == 48

    wrong = api(
        emulator,
        [{"a": "us", "user": EMAIL, "uh": "x"}],
        headers={"X-Hashcash": f"1:{token}:{failing_prefix(token, 255)}"},
    )
    assert wrong.status_code == 402
    fresh = wrong.headers["X-Hashcash"].split(":")[3]
    assert fresh != token

    solved = api(
        emulator,
        [{"a": "us", "user": EMAIL, "uh": "x"}],
        headers={"X-Hashcash": f"1:{fresh}:{solve_hashcash(fresh, 255)}"},
    )
    assert solved.status_code == 200 and solved.json() == [-9]  # bad uh, but past hashcash
    stats = emulator.stats()
    assert stats["hashcash_issued"] == 2 and stats["hashcash_passed"] == 1


# -- API faults -------------------------------------------------------------------


def test_eagain_is_a_bare_integer(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    emulator.faults.api_eagain_next = 2
    for _ in range(2):
        response = api(emulator, [{"a": "us0", "user": EMAIL}])
        assert response.status_code == 200 and response.json() == -3
    assert api(emulator, [{"a": "us0", "user": EMAIL}]).json()[0]["v"] == 2
    emulator.faults.update(api_eagain_probability=1.0)
    assert api(emulator, [{"a": "us0", "user": EMAIL}]).json() == -3
    assert emulator.stats()["faults_injected"]["api_eagain"] == 3


def test_session_expires_after_n_calls(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    m = login(emulator)  # login() itself makes one authenticated call ('f')
    emulator.faults.session_expire_after_calls = 3
    assert api(emulator, [{"a": "uq"}], sid=m.sid).json()[0]["cstrg"] == 0
    assert api(emulator, [{"a": "ug"}], sid=m.sid).json()[0]["email"] == EMAIL
    assert api(emulator, [{"a": "ug"}], sid=m.sid).json() == -15
    assert api(emulator, [{"a": "ug"}], sid="bogus").json() == -15
    emulator.faults.session_expire_after_calls = None
    again = login(emulator)  # a fresh log-in gives a working session
    assert again.sid != m.sid and again.get_user()["email"] == EMAIL


def test_unauthenticated_and_unknown_commands(emulator: MegaEmulator) -> None:
    assert api(emulator, [{"a": "f", "c": 1}]).json() == [-11]
    assert api(emulator, [{"a": "nope"}, {"a": "us0", "user": "x@y.z"}]).json() == [-2, {"v": 1}]
    emulator.faults.update(api_ratelimit_probability=1.0)
    assert api(emulator, [{"a": "us0", "user": "x@y.z"}]).json() == -4
    emulator.faults.update(api_ratelimit_probability=0.0, api_tempunavail_probability=1.0)
    assert api(emulator, [{"a": "us0", "user": "x@y.z"}]).json() == -18


# -- upload protocol and chunk faults ------------------------------------------------


def session(emu: MegaEmulator) -> tuple[str, str]:
    """(sid, root handle) of a fresh log-in."""
    m = login(emu)
    return m.sid, m.root_id


def upload_url(emu: MegaEmulator, sid: str, size: int) -> str:
    url = api(emu, [{"a": "u", "s": size}], sid=sid).json()[0]["p"]
    assert url.startswith(f"{emu.url}/ul/")
    return url


def put_file(emu: MegaEmulator, sid: str, root: str, completion: str) -> Any:
    return api(
        emu,
        [
            {
                "a": "p",
                "t": root,
                "n": [{"h": completion, "t": 0, "a": "QUJD", "k": "AAAAAAAAAAAAAAAAAAAAAA"}],
            }
        ],
        sid=sid,
    ).json()[0]


def test_chunks_in_any_order_with_resends(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    data = os.urandom(300_000)
    url = upload_url(emulator, sid, len(data))
    pieces = [(0, 100_000), (200_000, 300_000), (0, 100_000), (100_000, 200_000)]
    answers = [requests.post(f"{url}/{a}", data=data[a:b], timeout=TIMEOUT) for a, b in pieces]
    assert [r.text for r in answers[:3]] == ["", "", ""]
    completion = answers[3].text
    assert len(completion) == 36 and len(b64url_decode(completion)) == 27
    # A resend after completion repeats the handle.
    assert requests.post(f"{url}/0", data=data[:10], timeout=TIMEOUT).text == completion

    node = put_file(emulator, sid, root, completion)["f"][0]
    assert node["s"] == len(data) and node["k"].endswith(":AAAAAAAAAAAAAAAAAAAAAA")
    assert emulator.read_ciphertext(node["h"]) == data
    assert put_file(emulator, sid, root, completion) == -9  # a handle is used once

    info = api(emulator, [{"a": "g", "g": 1, "n": node["h"]}], sid=sid).json()[0]
    ranged = requests.get(info["g"], headers={"Range": "bytes=10-19"}, timeout=TIMEOUT)
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert requests.get(f"{info['g']}/5-9", timeout=TIMEOUT).content == data[5:10]


@pytest.mark.parametrize(
    ("version", "ack"),
    [(None, b""), (2, b""), (3, b"0")],
    ids=["legacy", "v2", "v3"],
)
def test_upload_answers_in_the_protocol_version_asked_for(
    emulator: MegaEmulator, version: int | None, ack: bytes
) -> None:
    # Legacy (no "v", mega.py): empty acknowledgements, a 36-character token used as is.
    # v2 (web client upload2.js, megajs): empty acknowledgements, a 36-byte binary token
    # ending in byte 1, sent base64url-encoded in 'p'. v3 (the SDK's transferslot.cpp):
    # "0" acknowledgements and the binary token.
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    data = os.urandom(200_000)
    command: dict[str, Any] = {"a": "u", "s": len(data), "ssl": 2}
    if version is not None:
        command["v"] = version
    url = api(emulator, [command], sid=sid).json()[0]["p"]
    first = requests.post(f"{url}/0", data=data[:131072], timeout=TIMEOUT)
    assert first.content == ack
    last = requests.post(f"{url}/131072", data=data[131072:], timeout=TIMEOUT).content
    assert len(last) == 36
    if version is None:
        handle = last.decode("ascii")
        assert len(b64url_decode(handle)) == 27
    else:
        assert last[35] == 1
        handle = b64url_encode(last)
    node = put_file(emulator, sid, root, handle)["f"][0]
    assert emulator.read_ciphertext(node["h"]) == data
    assert emulator.stats()[f"upload_urls_v{version or 0}"] == 1


FOLDER = {"h": "xxxxxxxx", "t": 1, "a": "QUJD", "k": "AAAAAAAAAAAAAAAAAAAAAA"}


def test_a_repeated_request_id_gets_its_answer_again(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    make = [{"a": "p", "t": root, "n": [FOLDER]}]
    first = api(emulator, make, sid=sid, ident="70")
    assert api(emulator, make, sid=sid, ident="70").content == first.content
    assert emulator.stats()["folders_created"] == 1
    assert emulator.stats()["replayed_answers"] == 1
    # A bare -3 was not an answer to keep: its resend is carried out.
    emulator.faults.api_eagain_next = 1
    assert api(emulator, make, sid=sid, ident="71").json() == -3
    assert "f" in api(emulator, make, sid=sid, ident="71").json()[0]
    assert emulator.stats()["folders_created"] == 2


def test_a_blocked_accounts_session_answers_only_why(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, _ = session(emulator)
    assert api(emulator, [{"a": "whyamiblocked"}], sid=sid).json() == [0]
    emulator.faults.update(blocked_emails=[EMAIL], blocked_reason_code=700)
    assert api(emulator, [{"a": "uq"}], sid=sid).json() == -16
    assert api(emulator, [{"a": "whyamiblocked"}, {"a": "uq"}], sid=sid).json() == -16
    assert api(emulator, [{"a": "whyamiblocked"}], sid=sid).json() == [700]


def test_a_node_put_into_a_removed_folder_lands_in_the_rubbish_bin(
    emulator: MegaEmulator,
) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    folder = api(emulator, [{"a": "p", "t": root, "n": [FOLDER]}], sid=sid).json()[0]["f"][0]
    assert api(emulator, [{"a": "d", "n": folder["h"]}], sid=sid).json() == [0]
    url = upload_url(emulator, sid, 10)
    completion = requests.post(f"{url}/0", data=b"0123456789", timeout=TIMEOUT).text
    node = put_file(emulator, sid, folder["h"], completion)["f"][0]
    assert node["p"] == emulator.store.accounts[EMAIL].rubbish
    assert emulator.location(node["h"]) == "rubbish"


def test_zero_byte_upload(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    url = upload_url(emulator, sid, 0)
    completion = requests.post(f"{url}/0", data=b"", timeout=TIMEOUT).text
    assert len(completion) == 36
    node = put_file(emulator, sid, root, completion)["f"][0]
    assert node["s"] == 0 and emulator.read_ciphertext(node["h"]) == b""


def test_chunk_faults(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    data = os.urandom(64 * 1024)
    url = upload_url(emulator, sid, len(data))
    faults = emulator.faults
    with requests.Session() as http:
        post = functools.partial(http.post, f"{url}/0", data=data, timeout=TIMEOUT)
        faults.chunk_http500_next = 1
        assert post().status_code == 500
        faults.chunk_http403_next = 1
        assert post().status_code == 403
        faults.update(chunk_http503_next=1, chunk_http429_next=1, chunk_http509_next=1)
        assert sorted(post().status_code for _ in range(3)) == [429, 503, 509]
        faults.update(chunk_error_next=1, chunk_error_code=-14)  # only this piece again
        assert post().text == "-14"
        faults.chunk_drop_next = 1
        with pytest.raises(requests.ConnectionError):
            post()
        completion = post().text  # nothing above stored anything; this completes
    assert len(completion) == 36
    assert emulator.read_ciphertext(put_file(emulator, sid, root, completion)["f"][0]["h"]) == data
    injected = emulator.stats()["faults_injected"]
    for name in (
        "chunk_http500",
        "chunk_http403",
        "chunk_http503",
        "chunk_http429",
        "chunk_http509",
        "chunk_error",
        "chunk_drop",
    ):
        assert injected[name] == 1, name


def test_over_quota_and_quota_size(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    emulator.faults.over_quota_upload_url = True
    assert api(emulator, [{"a": "u", "s": 10}], sid=sid).json() == [-17]
    emulator.faults.update(over_quota_upload_url=False, storage_quota_bytes=100)
    assert api(emulator, [{"a": "u", "s": 101}], sid=sid).json() == [-17]
    url = upload_url(emulator, sid, 100)
    completion = requests.post(f"{url}/0", data=b"x" * 100, timeout=TIMEOUT).text
    emulator.faults.over_quota_put_nodes = True
    assert put_file(emulator, sid, root, completion) == -17
    quota = api(emulator, [{"a": "uq", "xfer": 1, "strg": 1}], sid=sid).json()[0]
    assert quota["mstrg"] == 100 and quota["cstrg"] == 0 and "mxfer" in quota


def test_faults_validation_and_handles_without_dash() -> None:
    with MegaEmulator(
        seed=3, avoid_dash_in_handles=True, faults={"chunk_http500_probability": 0.5}
    ) as emu:
        with pytest.raises(ValueError):
            emu.faults.update(no_such_fault=1)
        with pytest.raises(ValueError):
            emu.faults.api_eagain_probability = 2.0
        assert emu.faults.chunk_http500_probability == 0.5
        handles = {emu.store.new_node_handle() for _ in range(2000)}
        assert all(len(h) == 8 and "-" not in h for h in handles)


# -- process mode -------------------------------------------------------------------


def test_process_mode_prints_url_serves_control_api_and_stops(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.mega_emulator",
            "--port",
            "0",
            "--account",
            f"{EMAIL}:{PASSWORD}",
            "--data-dir",
            str(tmp_path),
            "--seed",
            "1",
            "--fault",
            "api_delay=0",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=TIMEOUT), "no URL printed in time"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        stats = requests.get(f"{url}/_emulator/stats", timeout=TIMEOUT).json()
        assert stats["accounts"] == 1 and stats["logins_ok"] == 0
        nodes = requests.get(
            f"{url}/_emulator/nodes", params={"email": EMAIL}, timeout=TIMEOUT
        ).json()
        assert sorted(n["t"] for n in nodes) == [2, 3, 4]

        changed = requests.post(
            f"{url}/_emulator/faults", json={"api_eagain_next": 1}, timeout=TIMEOUT
        )
        assert changed.status_code == 200 and changed.json()["api_eagain_next"] == 1
        bad = requests.post(f"{url}/_emulator/faults", json={"nope": 1}, timeout=TIMEOUT)
        assert bad.status_code == 400
        added = requests.post(
            f"{url}/_emulator/accounts",
            json={"email": "two@example.com", "password": "pw"},
            timeout=TIMEOUT,
        )
        assert added.status_code == 200

        prelogin = [{"a": "us0", "user": "two@example.com"}]
        assert requests.post(f"{url}/cs", json=prelogin, timeout=TIMEOUT).json() == -3
        assert requests.post(f"{url}/cs", json=prelogin, timeout=TIMEOUT).json()[0]["v"] == 2
        stats = requests.get(f"{url}/_emulator/stats", timeout=TIMEOUT).json()
        # Commands count once processed; the EAGAIN'd request never got that far.
        assert stats["accounts"] == 2 and stats["commands"]["us0"] == 1
        assert stats["api_requests"] == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0


# -- transport details -----------------------------------------------------------------


def test_chunked_transfer_encoding_and_concurrent_keep_alive_uploads(
    emulator: MegaEmulator,
) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, root = session(emulator)
    data = os.urandom(3 * 1024 * 1024 + 17)
    url = upload_url(emulator, sid, len(data))

    def pieces() -> Any:  # a generator body goes out chunked
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    completion = requests.post(f"{url}/0", data=pieces(), timeout=TIMEOUT).text
    node = put_file(emulator, sid, root, completion)["f"][0]
    assert emulator.read_ciphertext(node["h"]) == data

    # Four uploads at once, each over one reused connection, chunks interleaved.
    blobs = [os.urandom(1024 * 1024 + i) for i in range(4)]
    urls = [upload_url(emulator, sid, len(b)) for b in blobs]
    results: dict[int, str] = {}
    errors: list[Exception] = []

    def upload(index: int) -> None:
        try:
            blob, target = blobs[index], urls[index]
            with requests.Session() as http:
                offsets = list(range(0, len(blob), 128 * 1024))[::-1]  # backwards
                for offset in offsets:
                    answer = http.post(
                        f"{target}/{offset}",
                        data=blob[offset : offset + 128 * 1024],
                        timeout=TIMEOUT,
                    )
                    answer.raise_for_status()
                    results[index] = answer.text
        except (requests.RequestException, OSError) as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
        assert not thread.is_alive()
    assert not errors
    for index, blob in enumerate(blobs):
        handle = put_file(emulator, sid, root, results[index])["f"][0]["h"]
        assert emulator.read_ciphertext(handle) == blob


def test_seeded_fault_rolls_repeat() -> None:
    def sequence(seed: int) -> list[int]:
        with MegaEmulator(seed=seed, faults={"api_eagain_probability": 0.5}) as emu:
            return [api(emu, [{"a": "us0", "user": "a@b.c"}]).json() == -3 for _ in range(20)]

    first = sequence(11)
    assert first == sequence(11)
    assert 0 < sum(first) < 20


def test_hashcash_on_every_request_and_delays(emulator: MegaEmulator) -> None:
    emulator.faults.update(hashcash_easiness=255, hashcash_all_requests=True, api_delay=0.2)
    started = time.monotonic()
    challenged = api(emulator, [{"a": "us0", "user": EMAIL}])
    assert challenged.status_code == 402
    assert time.monotonic() - started >= 0.2
    token = challenged.headers["X-Hashcash"].split(":")[3]
    answer = api(
        emulator,
        [{"a": "us0", "user": EMAIL}],
        headers={"X-Hashcash": f"1:{token}:{solve_hashcash(token, 255)}"},
    )
    assert answer.status_code == 200 and answer.json() == [{"v": 1}]
    # A token answers one challenge only.
    replay = api(
        emulator,
        [{"a": "us0", "user": EMAIL}],
        headers={"X-Hashcash": f"1:{token}:{solve_hashcash(token, 255)}"},
    )
    assert replay.status_code == 402


@pytest.mark.parametrize("code", [-3, -4, -6])
def test_after_a_restart_code_the_upload_url_is_dead(emulator: MegaEmulator, code: int) -> None:
    # src/transferslot.cpp: the upload "cannot be continued on that server".
    emulator.add_account(EMAIL, PASSWORD)
    sid, _ = session(emulator)
    url = upload_url(emulator, sid, 10)
    emulator.faults.update(chunk_error_next=1, chunk_error_code=code)
    with requests.Session() as http:
        answers = [http.post(f"{url}/0", data=b"x" * 10, timeout=TIMEOUT).text for _ in range(3)]
    assert answers == [str(code)] * 3
    fresh = upload_url(emulator, sid, 10)
    assert len(requests.post(f"{fresh}/0", data=b"x" * 10, timeout=TIMEOUT).text) == 36


def test_pieces_beyond_the_window_are_refused(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, _ = session(emulator)
    emulator.faults.upload_window_bytes = 1000
    url = upload_url(emulator, sid, 3000)
    with requests.Session() as http:
        assert http.post(f"{url}/0", data=b"x" * 500, timeout=TIMEOUT).text == ""
        assert http.post(f"{url}/1200", data=b"x" * 500, timeout=TIMEOUT).text == "-4"
    assert emulator.stats()["window_refusals"] == 1


def test_upload_urls_record_the_ssl_flag(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD)
    sid, _ = session(emulator)
    api(emulator, [{"a": "u", "s": 1, "ssl": 2}], sid=sid)
    api(emulator, [{"a": "u", "s": 1}], sid=sid)
    stats = emulator.stats()
    assert stats["upload_urls_ssl"] == 1 and stats["upload_urls_without_ssl"] == 1


def test_error_objects_and_2fa_accounts(emulator: MegaEmulator) -> None:
    emulator.add_account(EMAIL, PASSWORD, totp_secret="GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")
    emulator.faults.error_objects = True
    assert api(emulator, [{"a": "ug"}]).json() == [{"err": -11}]
    assert api(emulator, [{"a": "ug"}], sid="nope").json() == [{"err": -15}]
    with pytest.raises(Exception):  # noqa: B017 - mega.py's own log-in cannot pass 2FA
        login(emulator)
    assert emulator.stats()["logins_mfa_required"] >= 1
