"""Several instances sharing one Redis: one MEGA log-in in total, a session sealed with the
password (through scrypt) under a name that says nothing about it, life without Redis, and
the wrong-token brake counted across instances.

Each instance is a real server process with a session file of its own (no shared disk),
against the MEGA emulator and a real redis-server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.shared_state import KEY_PREFIX, RedisState
from app.storage.mega.errors import FolderLockTimeout, LoginLockTimeout
from app.storage.mega.session import CachedSession, SessionStore, shared_session_store
from tests.conftest import EmulatorOptions, RedisServer
from tests.mega_emulator import MegaEmulator
from tests.support.deploy import start_command_argv
from tests.support.mega_service import EMAIL, PASSWORD, Service, start_service

WAIT_S = 60
# A cloud of its own for each test: log-in counts start at zero, nobody logged in before.
MEGA_EMULATOR = EmulatorOptions(seed=41, accounts=((EMAIL, PASSWORD),))


@pytest.fixture
def instances(emulator: MegaEmulator, tmp_path: Path) -> Iterator[list[Service]]:
    """Services started by a test (appended to this list), stopped at its end."""
    started: list[Service] = []
    yield started
    for service in started:
        service.close()


def start_instance(
    started: list[Service], emulator: MegaEmulator, base: Path, redis_url: str, workers: int = 0
) -> Service:
    """A uvicorn process, or with ``workers`` the deploy's gunicorn command with that many."""
    argv = None
    if workers:
        argv = [part.replace("127.0.0.1:0", "127.0.0.1:{port}") for part in start_command_argv(0)]
    env = {"REDIS_URL": redis_url, "LOG_LEVEL": "info", "WEB_CONCURRENCY": str(workers or 1)}
    service = start_service(base, emulator, argv, **env)
    started.append(service)
    return service


def upload_ok(service: Service, name: str) -> None:
    answer = service.upload(name, name.encode() * 100)
    assert answer.status_code == 200, answer.text
    assert answer.json()["link"].startswith("https://mega.nz/file/")


def redis_dump(url: str) -> bytes:
    """Every key and value in Redis, serialized, whatever its type."""
    client = redis.Redis.from_url(url)
    try:
        return b"".join(key + (client.dump(key) or b"") for key in client.scan_iter())
    finally:
        client.close()


def secret_forms(session_file: Path) -> list[bytes]:
    """The session id and master key as bytes, in every form a careless store would use."""
    data = json.loads(session_file.read_text())
    sid = data["sid"].encode()
    key = struct.pack(">4I", *data["master_key"])
    forms = [sid, key, base64.b64encode(key), base64.urlsafe_b64encode(key).rstrip(b"=")]
    forms.append(json.dumps(data["master_key"]).encode())
    forms.append(base64.b64decode(sid + b"=" * (-len(sid) % 4), altchars=b"-_")[:16])
    return forms


def test_instances_and_a_restart_log_in_to_mega_once_and_seal_the_session(
    emulator: MegaEmulator,
    instances: list[Service],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Three instances start at once, the last with gunicorn and 2 workers: four processes
    # race for the log-in.
    with ThreadPoolExecutor(3) as pool:
        started = list(
            pool.map(
                lambda i: start_instance(
                    instances, emulator, tmp_path / f"i{i}", redis_server.url, 2 * (i == 2)
                ),
                range(3),
            )
        )
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda s: upload_ok(s, f"first-{s.server.port}.bin"), started))
    # A restart on another machine: a new process with an empty disk.
    started[0].close()
    restarted = start_instance(instances, emulator, tmp_path / "restarted", redis_server.url)
    upload_ok(restarted, "after-restart.bin")

    assert emulator.stats()["logins_ok"] == 1
    # One destination folder too: instances starting together make no twins.
    names = emulator.sdk_names(EMAIL)
    assert (names.count("Paimon"), names.count("uploads")) == (1, 1), names
    logs = "".join(s.server.log() for s in [*started, restarted])
    assert logs.count("logged in to MEGA\n") == 1
    assert logs.count("MEGA session taken from the session store") == 4

    # Redis holds the session (a key per account), but none of its secrets in any form.
    dump = redis_dump(redis_server.url)
    assert b"paimon:blob:mega-session:" in dump
    # The instance that logged in also kept its machine's copy, in the clear, as before.
    files = [Path(s.server.env["MEGA_SESSION_FILE"]) for s in [*started, restarted]]
    (session_file,) = [path for path in files if path.exists()]
    for form in secret_forms(session_file):
        assert form not in dump


def test_without_redis_uploads_go_on_and_a_new_instance_logs_in_alone(
    emulator: MegaEmulator,
    instances: list[Service],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    first = start_instance(instances, emulator, tmp_path / "first", redis_server.url)
    upload_ok(first, "before.bin")
    redis_server.stop()

    upload_ok(first, "during.bin")
    # A new instance while Redis is away: its own log-in under its own file lock, at once
    # (never waiting on a lock it cannot reach), with one line saying why.
    second = start_instance(instances, emulator, tmp_path / "second", redis_server.url)
    upload_ok(second, "second.bin")
    upload_ok(second, "second-again.bin")
    assert emulator.stats()["logins_ok"] == 2
    log = second.server.log()
    assert log.count("MEGA session: shared state unreachable") == 1, log
    assert "Traceback" not in log
    ready = httpx.get(f"{second.url}/ready", timeout=WAIT_S)
    assert "unreachable" in ready.text

    # Redis back, empty (it kept nothing): the second instance, restarted on its machine,
    # finds its session file and hands the session to Redis; a new instance takes it there.
    redis_server.start()
    second.close()
    again = start_instance(instances, emulator, tmp_path / "second", redis_server.url)
    upload_ok(again, "second-restarted.bin")
    third = start_instance(instances, emulator, tmp_path / "third", redis_server.url)
    upload_ok(third, "third.bin")
    assert emulator.stats()["logins_ok"] == 2


# -- the wrong-token brake across instances ------------------------------------------------


def test_the_brake_on_wrong_tokens_counts_across_instances(live_server, redis_server) -> None:
    env = {"REDIS_URL": redis_server.url, "AUTH_FAILURES_PER_MINUTE": "4"}
    servers = [live_server(**env), live_server(**env)]
    wrong = {"X-Auth-Token": "not-the-token-1234567890"}
    statuses = []
    for attempt in range(6):
        answer = httpx.put(
            f"{servers[attempt % 2].url}/files/x.txt", content=b"x", headers=wrong, timeout=WAIT_S
        )
        statuses.append(answer.status_code)
    # Four failures in total, not four per instance, then 429 on either.
    assert statuses == [403, 403, 403, 403, 429, 429], statuses
    right = {"X-Auth-Token": servers[0].env["AUTH_TOKEN"]}
    assert httpx.put(f"{servers[0].url}/files/x.txt", content=b"x", headers=right).status_code == (
        429
    )

    # Redis gone: the brake counts per process again, never answering 500.
    redis_server.stop()
    for server in servers:
        answer = httpx.put(f"{server.url}/files/y.txt", content=b"y", headers=wrong, timeout=WAIT_S)
        assert answer.status_code == 403, answer.text
        answer = httpx.put(
            f"{server.url}/files/y.txt",
            content=b"y",
            headers={"X-Auth-Token": server.env["AUTH_TOKEN"]},
            timeout=WAIT_S,
        )
        assert answer.status_code == 200, answer.text


# -- the shared session store in one process -------------------------------------------------


def shared_store(
    redis_url: str, password: str, folder: Path, api_url: str = "http://mega.test/"
) -> SessionStore:
    return shared_session_store(
        RedisState(redis_url), EMAIL, password, api_url, folder / "session.json"
    )


def blob_keys(redis_url: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return {key: client.get(key) or b"" for key in client.scan_iter(f"{KEY_PREFIX}blob:*")}
    finally:
        client.close()


def fast_hash_key(password: str, api_url: str) -> bytes:
    """The sealing key as earlier versions derived it: one fast hash of the credentials,
    which whoever reads Redis could test password guesses against quickly."""
    secret = f"{EMAIL}\n{password}\n{api_url.rstrip('/')}".encode()
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"paimon-server shared blob v1",
        info=b"mega-session",
    ).derive(secret)


def fast_hash_entry(password: str, api_url: str) -> str:
    """The Redis key earlier versions named the session after (password-derived)."""
    digest = hashlib.sha256(b"namespace" + fast_hash_key(password, api_url)).hexdigest()[:16]
    return f"{KEY_PREFIX}blob:mega-session:{digest}:login"


def opens_with_fast_hash(key: bytes, value: bytes, password: str, api_url: str) -> bool:
    sealed = base64.b64decode(value)
    aead = AESGCM(fast_hash_key(password, api_url))
    for associated in (key.decode().removeprefix(KEY_PREFIX).encode(), key, None):
        try:
            aead.decrypt(sealed[:12], sealed[12:], associated)
        except InvalidTag:
            continue
        return True
    return False


def test_a_changed_password_misses_the_shared_session(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    session = CachedSession("sid-abc", [1, 2, 3, 4], "user")
    shared_store(redis_server.url, PASSWORD, tmp_path / "a").save(session)
    assert shared_store(redis_server.url, PASSWORD, tmp_path / "b").load() == session
    renewed = shared_store(redis_server.url, "a new password", tmp_path / "c")
    assert renewed.load() is None
    # The log-in with the new password replaces the entry: the same one key, which now
    # opens only with the new password.
    before = set(blob_keys(redis_server.url))
    renewed.save(CachedSession("sid-new", [5, 6, 7, 8], "user"))
    assert set(blob_keys(redis_server.url)) == before and len(before) == 1
    assert shared_store(redis_server.url, "a new password", tmp_path / "d").load() == (
        CachedSession("sid-new", [5, 6, 7, 8], "user")
    )
    assert shared_store(redis_server.url, PASSWORD, tmp_path / "e").load() is None


def test_redis_key_names_say_nothing_about_the_password(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Names come from the account alone: two passwords of one account name the same key
    # (and the same lock), so a name cannot serve to test password guesses.
    names = []
    for index, password in enumerate([PASSWORD, "another password entirely"]):
        redis.Redis.from_url(redis_server.url).flushall()
        store = shared_store(redis_server.url, password, tmp_path / str(index))
        store.save(CachedSession(f"sid-{index}", [1, 2, 3, 4], "user"))
        with store.locked(5):
            names.append(set(blob_keys(redis_server.url)))
            client = redis.Redis.from_url(redis_server.url)
            names[-1] |= {key for key in client.scan_iter() if b"lock" in key}
            client.close()
    assert names[0] == names[1] and len(names[0]) >= 2, names
    for name in names[0]:
        assert name.decode() != fast_hash_entry(PASSWORD, "http://mega.test/")
        assert fast_hash_entry(PASSWORD, "http://mega.test/")[-22:-6] not in name.decode()
    # Another account names another key.
    shared_store(redis_server.url, PASSWORD, tmp_path / "x", "http://other.test/").save(
        CachedSession("sid-x", [1, 2, 3, 4], "user")
    )
    assert len(blob_keys(redis_server.url)) == 2


def test_the_sealed_session_does_not_open_with_a_fast_hash_of_the_password(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared_store(redis_server.url, PASSWORD, tmp_path / "a").save(
        CachedSession("sid-abc", [1, 2, 3, 4], "user")
    )
    ((key, value),) = blob_keys(redis_server.url).items()
    assert not opens_with_fast_hash(key, value, PASSWORD, "http://mega.test/")
    # The check above can tell: an entry sealed the old way does open with it.
    old_key = fast_hash_entry(PASSWORD, "http://mega.test/")
    old_value = old_entry(PASSWORD, "http://mega.test/", b'{"sid": "old"}')
    assert opens_with_fast_hash(old_key.encode(), old_value, PASSWORD, "http://mega.test/")


def old_entry(password: str, api_url: str, value: bytes) -> bytes:
    """A value sealed the way earlier versions sealed it."""
    name = fast_hash_entry(password, api_url).removeprefix(KEY_PREFIX)
    nonce = b"\x00" * 12
    sealed = AESGCM(fast_hash_key(password, api_url)).encrypt(nonce, value, name.encode())
    return base64.b64encode(nonce + sealed)


def test_a_changed_password_logs_in_once_and_replaces_the_shared_session(
    emulator: MegaEmulator,
    instances: list[Service],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Redis holds a session sealed with the account's former password, and an entry left by
    # an earlier version (named and sealed after a fast hash of the password).
    shared_store(redis_server.url, "the former password", tmp_path / "old", emulator.url).save(
        CachedSession("a-stale-sid", [1, 2, 3, 4], "user")
    )
    legacy = fast_hash_entry(PASSWORD, emulator.url)
    client = redis.Redis.from_url(redis_server.url)
    client.set(legacy, old_entry(PASSWORD, emulator.url, b'{"sid": "old"}'))
    (entry,) = [key for key in blob_keys(redis_server.url) if key.decode() != legacy]

    first = start_instance(instances, emulator, tmp_path / "first", redis_server.url)
    upload_ok(first, "after-the-change.bin")
    assert emulator.stats()["logins_ok"] == 1
    assert "does not open" in first.server.log()
    # Replaced in place, and the earlier version's entry is gone.
    assert set(blob_keys(redis_server.url)) == {entry}
    assert client.get(legacy) is None
    client.close()
    # The next instance (fresh disk) takes the new session: still one log-in.
    second = start_instance(instances, emulator, tmp_path / "second", redis_server.url)
    upload_ok(second, "second.bin")
    assert emulator.stats()["logins_ok"] == 1


@pytest.mark.parametrize(
    ("lock", "timeout"), [("locked", LoginLockTimeout), ("folder_locked", FolderLockTimeout)]
)
def test_the_shared_locks_hold_across_machines_and_wait_a_bounded_time(
    redis_server: RedisServer, tmp_path: Path, lock: str, timeout: type[Exception]
) -> None:
    # Two machines (no shared disk): the log-in and the folder creation each run on one
    # at a time, and the other gives up after its wait.
    holder = shared_store(redis_server.url, PASSWORD, tmp_path / "a")
    waiter = shared_store(redis_server.url, PASSWORD, tmp_path / "b")
    with getattr(holder, lock)(30):
        started = time.monotonic()
        with pytest.raises(timeout), getattr(waiter, lock)(0.5):
            pass
        assert time.monotonic() - started < 10
    with getattr(waiter, lock)(0.5):
        pass  # free again once the holder is done
