"""The MEGA client layer against the MEGA emulator: log-in, session sharing, retries,
re-login, proof of work, the error table, and secrets staying out of logs and errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import MEGA_DEFAULTS
from app.storage.base import (
    StorageBlocked,
    StorageFull,
    StorageLoginFailed,
    StorageTimeout,
    StorageUnavailable,
    UpstreamRejected,
)
from app.storage.mega import hashcash
from app.storage.mega.client import MegaClient, session_id
from app.storage.mega.errors import (
    Action,
    HashcashUnsolved,
    MegaAccountBlocked,
    MegaApiError,
    MegaBadAnswer,
    MegaChunkError,
    MegaDeadlineExceeded,
    MegaHttpError,
    MegaLoginError,
    MegaRetriesExhausted,
    MegaTransportError,
    action_for,
    to_storage_error,
)
from app.storage.mega.folders import ensure_folder, find_folder
from app.storage.mega.retry import Deadline, RetryPolicy, call_with_retries
from app.storage.mega.session import FileSessionStore, MemorySessionStore, decode_session
from app.storage.mega.totp import totp
from tests.conftest import EmulatorOptions
from tests.mega_emulator import MegaEmulator, verify_hashcash
from tests.mega_emulator.accounts.crypto import encrypt_session_id, new_session_secret
from tests.mega_emulator.codec import b64url_decode
from tests.mega_emulator.hashcash import new_challenge
from tests.support.mega_service import QUICK_WAITS

ROOT = Path(__file__).resolve().parent.parent
EMAIL = "owner@example.com"
PASSWORD = "Tr0ub4dor-and-3-horses"
FAST = RetryPolicy(attempts=6, deadline_s=10, initial_s=0.01, max_s=0.05, waits=QUICK_WAITS)
QUOTA = {"a": "uq", "strg": 1, "xfer": 1}
CHILD_TIMEOUT_S = 60
MEGA_EMULATOR = EmulatorOptions(seed=11, accounts=((EMAIL, PASSWORD),))


@pytest.fixture
def session_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "mega-session.json"


@pytest.fixture
def make_client(emulator: MegaEmulator, session_file: Path) -> Iterator[Callable[..., MegaClient]]:
    clients: list[MegaClient] = []

    def make(**kwargs: Any) -> MegaClient:
        args: dict[str, Any] = {
            "email": EMAIL,
            "password": PASSWORD,
            "session_file": session_file,
            "policy": FAST,
            "connect_timeout": 2,
            "read_timeout": 5,
        }
        args.update(kwargs)
        client = MegaClient(emulator.url, **args)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def logins(emulator: MegaEmulator) -> int:
    return emulator.stats()["logins_ok"]


def cached_sid(session_file: Path) -> str:
    return json.loads(session_file.read_text())["sid"]


# -- log-in and plain calls --------------------------------------------------------------


def test_login_is_lazy_and_api_calls_work(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], session_file: Path
) -> None:
    client = make_client()
    assert not client.logged_in and logins(emulator) == 0  # nothing happens at construction
    quota = client.api(QUOTA)
    assert quota["mstrg"] > 0 and "cstrg" in quota
    assert client.logged_in and logins(emulator) == 1
    # The sid decrypted from csid is the one the emulator issued.
    assert cached_sid(session_file) in emulator.store.sessions
    assert client.user_handle == emulator.store.accounts[EMAIL].user_handle
    assert len(client.master_key) == 4
    store = FileSessionStore(session_file, client.account)
    created = ensure_folder(client, "Paimon/uploads", store.folder_locked, 5)
    assert find_folder(client, "Paimon/uploads") == created
    assert logins(emulator) == 1


@pytest.mark.parametrize(
    "password",
    ["old-style-pass", "mot de passe d'été", "пароль über 密码 🔑"],
    ids=["ascii", "latin-1", "beyond-latin-1"],
)
def test_v1_account_logs_in(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], password: str
) -> None:
    # The SDK takes any UTF-8 password for a v1 account (MegaClient::pw_key); mega.py's
    # str_to_a32 only Latin-1.
    emulator.add_account("legacy@example.com", password, version=1)
    client = make_client(email="legacy@example.com", password=password)
    assert client.api({"a": "ug"})["email"] == "legacy@example.com"


def test_the_account_version_comes_from_v_not_from_a_salt(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    # A v2 answer without its salt is a broken answer to the SDK (CommandPrelogin), not a
    # v1 account whose password is then "wrong".
    emulator.faults.prelogin_without_salt = True
    client = make_client()
    with pytest.raises(MegaBadAnswer):
        client.ensure_login()
    assert emulator.stats()["commands"].get("us", 0) == 0


def test_a_session_id_that_begins_with_a_zero_byte_is_read_at_its_full_width(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], session_file: Path
) -> None:
    # About one MEGA session id in 256 begins with a zero byte; the SDK reads it at a
    # fixed width (AsymmCipher::decrypt), so the zero stays.
    emulator.faults.session_id_leading_zero_next = 1
    client = make_client()
    client.ensure_login()
    assert emulator.stats()["faults_injected"]["session_id_leading_zero"] == 1
    assert cached_sid(session_file) in emulator.store.sessions
    assert client.api(QUOTA)["mstrg"] > 0
    assert logins(emulator) == 1
    # What mega-session prints works too.
    exported = decode_session(client.export_session(), client.account)
    assert exported is not None and exported.sid in emulator.store.sessions


def test_a_session_id_for_another_user_is_refused(emulator: MegaEmulator) -> None:
    account = emulator.store.accounts[EMAIL]
    other = emulator.add_account("someone@example.com", "another password 2")
    secret = new_session_secret(other.user_handle)
    answer = {
        "k": account.encrypted_master_key,
        "privk": account.encrypted_privk,
        "csid": encrypt_session_id(account.rsa, secret),
        "u": account.user_handle,
    }
    master_key = list(struct.unpack(">4I", account.master_key))
    with pytest.raises(MegaBadAnswer):
        session_id(answer, master_key)
    right = {
        **answer,
        "csid": encrypt_session_id(account.rsa, new_session_secret(account.user_handle)),
    }
    assert len(b64url_decode(session_id(right, master_key))) == 43


def test_session_cache_is_private_holds_no_password_and_is_keyed_to_the_account(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], session_file: Path
) -> None:
    client = make_client()
    client.ensure_login()
    mode = stat.S_IMODE(session_file.stat().st_mode)
    assert mode == 0o600
    text = session_file.read_text()
    assert PASSWORD not in text and EMAIL not in text
    cached = json.loads(text)
    assert cached["sid"] in emulator.store.sessions and cached["master_key"] == client.master_key
    lock_mode = stat.S_IMODE(session_file.with_name(session_file.name + ".lock").stat().st_mode)
    assert lock_mode == 0o600

    # Another account (or API URL) must not pick up this session.
    emulator.add_account("other@example.com", "another-password-1")
    other = make_client(email="other@example.com", password="another-password-1")
    assert other.api({"a": "ug"})["email"] == "other@example.com"
    assert logins(emulator) == 2


def test_restart_reuses_the_cached_session(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    make_client().api(QUOTA)
    assert logins(emulator) == 1
    restarted = make_client()
    assert restarted.api({"a": "ug"})["email"] == EMAIL
    assert logins(emulator) == 1
    assert restarted.user_handle == emulator.store.accounts[EMAIL].user_handle


def test_damaged_cache_leads_to_one_login(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], session_file: Path
) -> None:
    session_file.parent.mkdir(parents=True)
    session_file.write_text("{not json")
    client = make_client()
    client.api(QUOTA)
    assert logins(emulator) == 1 and cached_sid(session_file) in emulator.store.sessions


def test_threads_and_two_clients_share_one_login(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    emulator.faults.api_delay = 0.05  # widen the window in which log-ins could overlap
    clients = [make_client(), make_client()]
    errors: list[BaseException] = []

    def work(client: MegaClient) -> None:
        try:
            client.api(QUOTA)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(clients[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert logins(emulator) == 1
    assert clients[0].export_session() == clients[1].export_session()


_CHILD = """
import sys, time
from pathlib import Path
from app.storage.mega.client import MegaClient, session_id
from app.storage.mega.retry import RetryPolicy
url, email, password, session_file, start_at = sys.argv[1:6]
client = MegaClient(url, email, password, Path(session_file),
                    policy=RetryPolicy(attempts=4, deadline_s=20, initial_s=0.01, max_s=0.1))
time.sleep(max(0.0, float(start_at) - time.time()))
print(client.api({"a": "uq", "strg": 1})["mstrg"] > 0, flush=True)
client.close()
"""


def test_two_processes_share_one_login(emulator: MegaEmulator, session_file: Path) -> None:
    emulator.faults.api_delay = 0.05
    start_at = time.time() + 2.0  # both children start their call at the same moment
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _CHILD, emulator.url, EMAIL, PASSWORD, str(session_file)]
    children = [
        subprocess.Popen(
            [*argv, str(start_at)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            pytest.fail("a child process did not finish in time")
        assert child.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    assert outputs == ["True", "True"]
    assert logins(emulator) == 1  # one child logged in, the other used its session


# -- re-login ----------------------------------------------------------------------------


def test_expired_session_leads_to_exactly_one_new_login(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], session_file: Path
) -> None:
    emulator.faults.session_expire_after_calls = 3
    client = make_client()
    for _ in range(3):
        client.api(QUOTA)
    first_sid = cached_sid(session_file)
    assert logins(emulator) == 1
    assert client.api(QUOTA)["mstrg"] > 0  # ESID -> log in -> the call is repeated
    stats = emulator.stats()
    assert stats["sessions_expired"] == 1 and stats["logins_ok"] == 2
    assert cached_sid(session_file) != first_sid  # the cache follows


def test_relogin_in_one_process_is_picked_up_by_another_client(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    first, second = make_client(), make_client()
    first.api(QUOTA)
    second.api(QUOTA)
    emulator.expire_sessions()
    first.api(QUOTA)  # logs in again and rewrites the cache
    second.api(QUOTA)  # ESID, then finds the new session in the cache
    assert logins(emulator) == 2


def test_many_threads_hitting_an_expired_session_log_in_once(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client()
    client.api(QUOTA)
    emulator.expire_sessions()
    emulator.faults.api_delay = 0.05
    errors: list[BaseException] = []

    def work() -> None:
        try:
            client.api(QUOTA)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert logins(emulator) == 2


def test_session_rejected_again_after_relogin_fails_instead_of_looping(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client()
    client.ensure_login()
    emulator.faults.session_expire_after_calls = 0  # every session dies at its first call
    with pytest.raises(MegaApiError) as caught:
        client.api(QUOTA)
    assert caught.value.name == "ESID"
    assert isinstance(to_storage_error(caught.value), UpstreamRejected)
    assert logins(emulator) == 2  # one re-login, no more


# -- request ids ----------------------------------------------------------------------------
# MEGA answers a request id it has seen from its cache; the SDK resends the same id only
# after a transport failure or a bare -3/-4 (src/request.cpp, src/megaclient.cpp exec).


@pytest.mark.parametrize("objects", [False, True], ids=["number", "object"])
@pytest.mark.parametrize("code", [-3, -4, -18])
def test_a_command_error_is_tried_again_under_a_fresh_request_id(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], code: int, objects: bool
) -> None:
    client = make_client()
    client.ensure_login()
    emulator.faults.update(
        command_error_next=1,
        command_error_code=code,
        command_error_command="uq",
        error_objects=objects,
    )
    assert client.api(QUOTA)["mstrg"] > 0
    stats = emulator.stats()
    assert stats["faults_injected"]["command_error"] == 1
    assert stats["replayed_answers"] == 0


def test_a_request_whose_answer_was_lost_is_sent_again_under_its_id(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], session_file: Path
) -> None:
    client = make_client()
    store = FileSessionStore(session_file, client.account)
    client.ensure_login()
    emulator.faults.update(api_answer_lost_next=1, api_answer_lost_command="p")
    # MEGA made the folder; only the answer was lost. The resend gets that answer, and
    # no twin folder is made.
    made = ensure_folder(client, "Once", store.folder_locked, 5)
    stats = emulator.stats()
    assert stats["faults_injected"]["api_answer_lost"] == 1
    assert stats["replayed_answers"] == 1
    assert stats["folders_created"] == 1
    assert find_folder(client, "Once") == made


# -- retries -----------------------------------------------------------------------------


def test_eagain_half_the_time_is_retried_until_success(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client(policy=RetryPolicy(attempts=20, deadline_s=20, initial_s=0.01, max_s=0.05))
    client.ensure_login()
    emulator.faults.api_eagain_probability = 0.5
    for _ in range(10):
        assert client.api(QUOTA)["mstrg"] > 0
    assert emulator.stats()["faults_injected"]["api_eagain"] >= 3


def test_eagain_always_fails_after_the_attempts(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client(policy=RetryPolicy(attempts=5, deadline_s=10, initial_s=0.01, max_s=0.05))
    client.ensure_login()
    emulator.faults.api_eagain_probability = 1.0
    started = time.monotonic()
    with pytest.raises(MegaRetriesExhausted) as caught:
        client.api(QUOTA)
    assert time.monotonic() - started < 2
    assert emulator.stats()["faults_injected"]["api_eagain"] == 5
    error = to_storage_error(caught.value)
    assert type(error) is UpstreamRejected
    assert str(error) == "MEGA kept failing after 5 attempts"


def _waits_of(failures: list[BaseException], policy: RetryPolicy) -> list[float]:
    """The waits call_with_retries takes while ``failures`` happen in turn, then success."""
    slept: list[float] = []
    left = iter(failures)

    def flaky() -> str:
        failure = next(left, None)
        if failure is not None:
            raise failure
        return "ok"

    assert call_with_retries(flaky, policy, Deadline(10**6), sleep=slept.append) == "ok"
    return slept


def test_waits_are_megas_clients_waits() -> None:
    policy = RetryPolicy(attempts=5, deadline_s=10**6, initial_s=0.1, max_s=15)
    # The SDK's BackoffTimer: 0.1 s, then the base doubles and up to half of it is added.
    slept = _waits_of([MegaApiError(-3, whole_request=True)] * 4, policy)
    assert slept[0] == pytest.approx(0.1)
    for wait, base in zip(slept[1:], (0.2, 0.4, 0.8), strict=True):
        assert base <= wait <= 1.5 * base
    # A rate limit is waited out, however many times MEGA says it, and never near zero:
    # the web client's 0.9 s + Exp(4 s), doubled before each wait, at most 300 s.
    slept = _waits_of([MegaApiError(-4, whole_request=True)] * 12, policy)
    assert len(slept) == 12 and slept[0] >= 1.8
    for earlier, later in itertools.pairwise(slept):
        assert later == pytest.approx(min(300.0, 2 * earlier))
    # The upload server's 429 and 503: the SDK's fixed 0.5 s and 5 s, not counted.
    busy = [MegaHttpError(503, upload=True), MegaHttpError(429, upload=True)] * 4
    assert _waits_of(busy, policy) == [5.0, 0.5] * 4


def test_a_rate_limit_is_waited_out_instead_of_counted(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    policy = RetryPolicy(attempts=2, deadline_s=20, initial_s=0.01, max_s=0.05, waits=QUICK_WAITS)
    client = make_client(policy=policy)
    client.ensure_login()
    emulator.faults.api_ratelimit_next = 6
    assert client.api(QUOTA)["mstrg"] > 0
    assert emulator.stats()["faults_injected"]["api_ratelimit"] == 6


@pytest.mark.parametrize("status", [402, 403, 404, 400, 500])
def test_api_http_errors_are_tried_again(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], status: int
) -> None:
    # MEGA's clients resend a request whatever the status (the SDK's exec, the web client's
    # finish); 403 and 404 mean an expired upload URL only from the upload server.
    client = make_client()
    client.ensure_login()
    emulator.faults.update(api_http_error_next=2, api_http_error_status=status)
    assert client.api(QUOTA)["mstrg"] > 0
    assert emulator.stats()["faults_injected"]["api_http_error"] == 2


def test_eagain_always_stops_at_the_deadline(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client(
        policy=RetryPolicy(attempts=1000, deadline_s=1.0, initial_s=0.05, max_s=0.2)
    )
    client.ensure_login()
    emulator.faults.api_eagain_probability = 1.0
    started = time.monotonic()
    with pytest.raises(MegaDeadlineExceeded) as caught:
        client.api(QUOTA)
    assert time.monotonic() - started < 1.5
    assert isinstance(to_storage_error(caught.value), StorageTimeout)


def test_read_timeouts_exhausted_become_storage_timeout(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client(
        read_timeout=0.2, policy=RetryPolicy(attempts=3, deadline_s=10, initial_s=0.01, max_s=0.02)
    )
    client.ensure_login()
    emulator.faults.api_delay = 1.0
    started = time.monotonic()
    with pytest.raises(MegaRetriesExhausted) as caught:
        client.api(QUOTA)
    assert time.monotonic() - started < 2.5
    assert isinstance(caught.value.last, MegaTransportError)
    assert isinstance(to_storage_error(caught.value), StorageTimeout)


def test_unreachable_api_fails_after_bounded_attempts(tmp_path: Path) -> None:
    client = MegaClient(
        "http://127.0.0.1:9",
        EMAIL,
        PASSWORD,
        tmp_path / "s.json",
        connect_timeout=0.5,
        policy=RetryPolicy(attempts=3, deadline_s=5, initial_s=0.01, max_s=0.02),
    )
    with pytest.raises(MegaRetriesExhausted) as caught:
        client.ensure_login()
    assert caught.value.last.name == "connection"
    error = to_storage_error(caught.value)
    assert type(error) is StorageUnavailable
    assert str(error) == "could not connect to MEGA after 3 attempts"
    client.close()


# -- failures that are final -------------------------------------------------------------


def test_over_quota_is_storage_full_without_retry(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client()
    client.ensure_login()
    emulator.faults.over_quota_upload_url = True
    with pytest.raises(MegaApiError) as caught:
        client.api({"a": "u", "s": 1000})
    assert caught.value.code == -17 and caught.value.name == "EOVERQUOTA"
    error = to_storage_error(caught.value)
    assert isinstance(error, StorageFull)
    assert str(error) == "MEGA storage quota exceeded (EOVERQUOTA)"
    assert emulator.stats()["commands"]["u"] == 1


def test_wrong_password_fails_once_then_cools_down(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client(password="not-the-password", login_cooldown_s=0.5)
    for _ in range(5):  # e.g. readiness probes
        with pytest.raises(MegaLoginError) as caught:
            client.api(QUOTA)
        error = to_storage_error(caught.value)
        assert isinstance(error, StorageLoginFailed)
        assert str(error) == "MEGA login failed: wrong email or password"
    assert emulator.stats()["logins_failed"] == 1 and emulator.stats()["commands"]["us"] == 1
    time.sleep(0.6)
    with pytest.raises(MegaLoginError):
        client.ensure_login()
    assert emulator.stats()["logins_failed"] == 2


def test_an_account_blocked_at_log_in_is_a_state_not_refused_credentials(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    # A block can be lifted (an email verified, a suspension ended): the service waits it
    # out, saying why, instead of stopping as it does for a wrong password.
    emulator.add_account("blocked@example.com", "blocked-pass-1", blocked=True)
    client = make_client(email="blocked@example.com", password="blocked-pass-1")
    with pytest.raises(MegaAccountBlocked) as caught:
        client.ensure_login()
    error = to_storage_error(caught.value)
    assert type(error) is StorageBlocked
    assert str(error).startswith("the MEGA account is blocked")
    with pytest.raises(MegaAccountBlocked):  # no log-in again until the next look
        client.ensure_login()
    assert emulator.stats()["logins_failed"] == 1


def test_a_blocked_account_fails_fast_says_why_once_and_recovers(
    emulator: MegaEmulator,
    make_client: Callable[..., MegaClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK treats -16 with a session as a state of the account and asks why
    # (MegaClient::block, whyamiblocked): here every call then fails at once with the
    # reason, until a look (every blocked_recheck_s) finds the account unblocked.
    caplog.set_level(logging.INFO)
    emulator.faults.blocked_reason_code = 700
    client = make_client(blocked_recheck_s=0)
    client.ensure_login()
    emulator.faults.blocked_emails = [EMAIL]
    for _ in range(3):
        with pytest.raises(MegaAccountBlocked) as caught:
            client.api(QUOTA)
        error = to_storage_error(caught.value)
        assert type(error) is StorageBlocked and "verify" in str(error)
    assert caplog.text.count("MEGA blocked the account") == 1
    stats = emulator.stats()
    assert stats["commands"]["whyamiblocked"] == 3  # a look each time, no 'uq' sent again
    assert stats["blocked_requests"] == 1
    emulator.faults.blocked_emails = []
    assert client.api(QUOTA)["mstrg"] > 0
    assert "MEGA account is no longer blocked" in caplog.text
    # Between looks, nothing goes to MEGA at all.
    patient = make_client(blocked_recheck_s=3600, session_file=client._store.path)
    emulator.faults.blocked_emails = [EMAIL]
    with pytest.raises(MegaAccountBlocked):
        patient.api(QUOTA)
    emulator.reset_stats()
    with pytest.raises(MegaAccountBlocked):
        patient.api(QUOTA)
    assert emulator.stats()["api_requests"] == 0


def test_secrets_never_reach_logs_or_errors(
    emulator: MegaEmulator,
    make_client: Callable[..., MegaClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client()
    client.api(QUOTA)
    sid, key = cached_sid(client._store.path), client.master_key
    assert sid
    messages: list[str] = []
    # A re-login, retries, a wrong password and a final error, all at DEBUG.
    emulator.expire_sessions()
    emulator.faults.api_eagain_next = 2
    client.api(QUOTA)
    emulator.faults.api_eagain_probability = 1.0
    with pytest.raises(MegaRetriesExhausted) as exhausted:
        client.api(QUOTA)
    messages += [str(exhausted.value), str(to_storage_error(exhausted.value))]
    emulator.faults.api_eagain_probability = 0.0
    wrong = make_client(
        password="wrong-" + PASSWORD, session_file=client._store.path.with_name("x")
    )
    with pytest.raises(MegaLoginError) as refused:
        wrong.ensure_login()
    messages += [str(refused.value), str(to_storage_error(refused.value)), repr(wrong)]
    text = caplog.text + "\n".join(messages)
    assert "retrying in" in caplog.text and "EAGAIN" in caplog.text
    assert "sid=<redacted>" in caplog.text
    for secret in (PASSWORD, sid, cached_sid(client._store.path), json.dumps(key)[1:-1]):
        assert secret not in text


# -- hashcash ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("easiness", "expected"),
    [(0, 8), (1, 24), (63, 127 << 3), (64, 1 << 10), (192, 1 << 24), (255, 127 << 24)],
)
def test_hashcash_threshold(easiness: int, expected: int) -> None:
    assert hashcash.threshold(easiness) == expected


def _reference_check(token: bytes, prefix: bytes, easiness: int) -> bool:
    """Straight from the description: counter, then the token in 262144 slots of 48 bytes."""
    slot = token + bytes(-len(token) % 16)
    slot = slot + bytes(48 - len(slot))
    digest = hashlib.sha256(prefix + slot * 262144).digest()
    value = (digest[0] << 24) | (digest[1] << 16) | (digest[2] << 8) | digest[3]
    threshold = (((easiness & 63) << 1) + 1) << ((easiness >> 6) * 7 + 3)
    return value <= threshold


def test_hashcash_solution_verifies_independently_and_at_the_emulator() -> None:
    token_text, header = new_challenge(200)  # about 1 in 15 tries passes
    answer = hashcash.solve(header, deadline_s=30)
    version, echoed, prefix_text = answer.split(":")
    assert version == "1" and echoed == token_text
    prefix = hashcash._b64url_decode(prefix_text)
    assert len(prefix) == 4
    assert _reference_check(hashcash._b64url_decode(token_text), prefix, 200)
    assert verify_hashcash(token_text, prefix_text, 200)
    # The counter is the first that works for its thread, so a neighbour usually fails.
    assert not _reference_check(hashcash._b64url_decode(token_text), prefix, 0)


def test_hashcash_rejects_other_versions_and_gives_up_at_the_deadline() -> None:
    with pytest.raises(HashcashUnsolved):
        hashcash.parse_challenge("2:200:0:AAAA")
    token, header = new_challenge(0)  # 1 in 2**29: never within the deadline
    started = time.monotonic()
    with pytest.raises(HashcashUnsolved) as caught:
        hashcash.solve_prefix(hashcash._b64url_decode(token), 0, deadline_s=0.3)
    assert time.monotonic() - started < 1.5
    # The answer header then is empty, which asks MEGA for a fresh challenge (as the SDK).
    assert hashcash.solve(header, deadline_s=0.3) == f"1:{token}:"
    error = to_storage_error(caught.value)
    assert isinstance(error, StorageUnavailable)
    assert str(error) == "MEGA asked for a proof of work that could not be solved in time"


def test_login_behind_a_hashcash_challenge(
    emulator: MegaEmulator,
    make_client: Callable[..., MegaClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    emulator.faults.hashcash_easiness = 200
    client = make_client(login_deadline_s=30)
    started = time.monotonic()
    assert client.api(QUOTA)["mstrg"] > 0
    assert time.monotonic() - started < 30
    stats = emulator.stats()
    assert stats["hashcash_issued"] == 1 and stats["hashcash_passed"] == 1
    assert stats["logins_ok"] == 1
    # The log says how big the work is, so a long start-up is understood.
    assert "easiness 200: about 15 tries of 12 MiB" in caplog.text


def test_unsolvable_hashcash_fails_the_login_in_bounded_time(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    emulator.faults.hashcash_easiness = 0
    client = make_client(hashcash_budget_s=0.3, login_deadline_s=1.0)
    started = time.monotonic()
    with pytest.raises(HashcashUnsolved) as caught:
        client.ensure_login()
    assert time.monotonic() - started < 3
    assert emulator.stats()["logins_ok"] == 0
    assert str(to_storage_error(caught.value)) == (
        "MEGA asked for a proof of work that could not be solved in time"
    )


# -- the table and the retry helper ------------------------------------------------------


def test_table_actions() -> None:
    for code in (-3, -4, -18, -19):
        assert action_for(MegaApiError(code)) is Action.RETRY
    for timed_out in (True, False):
        assert action_for(MegaTransportError(timed_out)) is Action.RETRY
    assert action_for(MegaHttpError(503)) is Action.RETRY
    assert action_for(MegaApiError(-15)) is Action.RELOGIN
    assert action_for(MegaApiError(-8)) is Action.RESTART_UPLOAD
    assert action_for(MegaApiError(-5)) is Action.RESTART_UPLOAD
    for code in (-2, -9, -11, -16, -17, -1, -99):
        assert action_for(MegaApiError(code)) is Action.FAIL
    assert action_for(ValueError("x")) is Action.FAIL


def test_the_upload_server_has_its_own_row_for_minus_4() -> None:
    # -4 from the API is a rate limit (retry); as a chunk answer it means "start again".
    assert action_for(MegaApiError(-4)) is Action.RETRY
    assert action_for(MegaChunkError(-4)) is Action.RESTART_UPLOAD
    assert action_for(MegaChunkError(-8)) is Action.RESTART_UPLOAD
    assert type(to_storage_error(MegaChunkError(-17))) is StorageFull


def test_an_api_call_ends_at_its_deadline(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    client = make_client(
        read_timeout=30, policy=RetryPolicy(attempts=50, deadline_s=60, initial_s=0.01, max_s=0.05)
    )
    client.ensure_login()
    emulator.faults.api_delay = 0.6
    started = time.monotonic()
    with pytest.raises(MegaDeadlineExceeded):
        client.api(QUOTA, Deadline(0.3))
    assert time.monotonic() - started < 0.6 + 0.3  # one request, cut to what was left
    emulator.faults.api_delay = 0.0
    emulator.faults.api_eagain_probability = 1.0
    started = time.monotonic()
    with pytest.raises(MegaDeadlineExceeded):
        client.api(QUOTA, Deadline(0.5))
    assert time.monotonic() - started < 1.0  # retries stop at the deadline, not at 50 tries
    emulator.faults.api_eagain_probability = 0.0
    with pytest.raises(MegaDeadlineExceeded):
        client.api(QUOTA, Deadline(0))
    assert client.api(QUOTA) is not None  # no deadline left behind for the next call


def test_table_storage_errors() -> None:
    assert type(to_storage_error(MegaApiError(-17))) is StorageFull
    assert type(to_storage_error(MegaLoginError(-9))) is StorageLoginFailed
    assert type(to_storage_error(MegaLoginError(-16))) is StorageLoginFailed
    for code in (-2, -9, -11):
        error = to_storage_error(MegaApiError(code))
        assert type(error) is UpstreamRejected and str(error).startswith("MEGA rejected")
    assert type(to_storage_error(MegaHttpError(509))) is UpstreamRejected
    # Unexpected exceptions never show their text.
    error = to_storage_error(RuntimeError("/secret/path sid=abc"))
    assert type(error) is UpstreamRejected and "secret" not in str(error)


def test_retry_helper_retries_only_what_the_predicate_allows() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MegaApiError(-3)
        return "ok"

    policy = RetryPolicy(attempts=5, deadline_s=5, initial_s=0.001, max_s=0.01)
    assert call_with_retries(flaky, policy, Deadline(5)) == "ok" and len(calls) == 3

    def final() -> None:
        calls.append(1)
        raise MegaApiError(-17)

    calls.clear()
    with pytest.raises(MegaApiError):
        call_with_retries(final, policy, Deadline(5))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(MegaRetriesExhausted):
        call_with_retries(final, policy, Deadline(5), retryable=lambda exc: True)
    assert len(calls) == 5


# -- as MEGA's own clients read MEGA ------------------------------------------------------

TOTP_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # RFC 6238's key "12345678901234567890"


def test_totp_matches_rfc_6238() -> None:
    # RFC 6238 appendix B (SHA-1), the last 6 of its 8 digits.
    assert totp(TOTP_SECRET, at=59) == "287082"
    assert totp(TOTP_SECRET, at=1111111109) == "081804"
    assert totp(TOTP_SECRET, at=2000000000) == "279037"


def test_a_2fa_account_without_a_secret_is_refused_by_name_and_cools_down(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    emulator.add_account("2fa@example.com", "two-factor-pass", totp_secret=TOTP_SECRET)
    client = make_client(email="2fa@example.com", password="two-factor-pass")
    for _ in range(3):  # e.g. readiness probes and uploads
        with pytest.raises(MegaLoginError) as caught:
            client.api(QUOTA)
        error = to_storage_error(caught.value)
        assert isinstance(error, StorageLoginFailed)
        assert "two-factor" in str(error) and "MEGA_TOTP_SECRET" in str(error)
    stats = emulator.stats()
    assert stats["commands"]["us"] == 1 and stats["logins_mfa_required"] == 1


def test_a_2fa_account_logs_in_with_its_totp_secret(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    emulator.add_account("2fa@example.com", "two-factor-pass", totp_secret=TOTP_SECRET)
    client = make_client(
        email="2fa@example.com", password="two-factor-pass", totp_secret=TOTP_SECRET
    )
    assert client.api({"a": "ug"})["email"] == "2fa@example.com"
    assert logins(emulator) == 1
    wrong = make_client(
        email="2fa@example.com",
        password="two-factor-pass",
        totp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
        store=MemorySessionStore(),
    )
    with pytest.raises(MegaLoginError) as caught:
        wrong.ensure_login()
    assert "two-factor code was refused" in str(to_storage_error(caught.value))


def test_error_objects_are_errors_and_an_esid_object_logs_in_again(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    emulator.faults.error_objects = True
    client = make_client()
    client.api(QUOTA)
    emulator.expire_sessions()
    assert client.api(QUOTA)["mstrg"] > 0  # {"err": -15} -> log in again -> repeat
    assert logins(emulator) == 2
    emulator.faults.over_quota_upload_url = True
    with pytest.raises(MegaApiError) as caught:
        client.api({"a": "u", "s": 10, "ssl": 2})
    assert caught.value.name == "EOVERQUOTA"
    wrong = make_client(password="not it", store=MemorySessionStore())
    with pytest.raises(MegaLoginError):
        wrong.ensure_login()


@pytest.mark.parametrize(
    ("code", "name"), [(-17, "EOVERQUOTA"), (-24, "EGOINGOVERQUOTA"), (-29, "EPAYWALL")]
)
def test_every_over_quota_code_is_storage_full(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], code: int, name: str
) -> None:
    client = make_client()
    emulator.faults.update(over_quota_upload_url=True, over_quota_code=code)
    with pytest.raises(MegaApiError) as caught:
        client.api({"a": "u", "s": 10, "ssl": 2})
    assert caught.value.name == name
    error = to_storage_error(caught.value)
    assert isinstance(error, StorageFull) and name in str(error)


def test_codes_past_minus_22_have_names() -> None:
    names = {code: MegaApiError(code).name for code in range(-30, -22)}
    assert names[-24] == "EGOINGOVERQUOTA" and names[-26] == "EMFAREQUIRED"
    assert names[-29] == "EPAYWALL" and not any(n.startswith("E-") for n in names.values())


def test_an_unsolved_challenge_is_answered_empty_for_a_fresh_one(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient]
) -> None:
    # Two challenges nobody can solve in 0.3 s, then a cheap one: the SDK's way (an empty
    # answer, a fresh challenge) logs in; giving up at the first budget would not.
    emulator.faults.update(hashcash_easiness=255, hashcash_hard_challenges_next=2)
    client = make_client(hashcash_budget_s=0.3, login_deadline_s=30)
    assert client.api(QUOTA)["mstrg"] > 0
    stats = emulator.stats()
    assert stats["hashcash_issued"] == 3 and stats["hashcash_empty_answers"] == 2
    assert stats["hashcash_passed"] == 1 and logins(emulator) == 1


def test_the_log_in_deadline_fits_easiness_100_on_one_core() -> None:
    # The one real challenge in the SDK's sources has easiness 100. Measure one core here
    # (best of a few tries, so other load on the machine does not count), and check that
    # the default log-in deadline finishes that search with 99 % probability.
    token = bytes(48)
    buffer = hashcash._buffer(token)
    times = []
    for _ in range(5):
        # The thread's own CPU time: what one core takes, however busy the machine is.
        started = time.thread_time()
        hashlib.sha256(buffer).digest()
        times.append(time.thread_time() - started)
    expected_tries = 2**32 / (hashcash.threshold(100) + 1)
    assert 50_000 < expected_tries < 60_000
    expected_s = expected_tries * min(times)
    deadline_s = MEGA_DEFAULTS.login_deadline_seconds
    # Tries are independent: P(not found by t) = exp(-t / expected).
    assert math.exp(-deadline_s / expected_s) < 0.01, (expected_s, deadline_s)
    # Each challenge gets the SDK's budget, and fresh ones keep coming until the deadline.
    assert hashcash.CHALLENGE_BUDGET_S == 100.0


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_proof_of_work_threads_follow_the_cgroup_quota(
    tmp_path: Path, files: dict[str, str], expected: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert hashcash.cpu_quota(tmp_path) == expected
    assert 1 <= hashcash.usable_cpus() <= hashcash.MAX_THREADS


def test_a_session_from_elsewhere_is_used_without_a_log_in_and_replaced_when_rejected(
    emulator: MegaEmulator, make_client: Callable[..., MegaClient], tmp_path: Path
) -> None:
    line = make_client(store=MemorySessionStore()).export_session()
    assert logins(emulator) == 1
    fresh = make_client(session=line, session_file=tmp_path / "fresh" / "s.json")
    assert fresh.api({"a": "ug"})["email"] == EMAIL
    assert logins(emulator) == 1  # MEGA_SESSION: no log-in at all
    emulator.expire_sessions()
    assert fresh.api({"a": "ug"})["email"] == EMAIL  # rejected: falls back to the password
    assert logins(emulator) == 2
    other = make_client(email="x@example.com", session=line, store=MemorySessionStore())
    emulator.add_account("x@example.com", "x-password-123")
    with pytest.raises(MegaLoginError):  # made for another account: not used
        other.ensure_login()
