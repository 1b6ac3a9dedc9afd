"""The shared store: sealed blobs that open only with their secret (under names that say
nothing about it), bounded locks, counters."""

from __future__ import annotations

import re
import threading
import time

import pytest
import redis
import yaml

from app.shared_state import (
    LockTimeout,
    MemoryState,
    RedisState,
    SealedBlobs,
    SharedState,
    SharedStateUnavailable,
)
from tests.conftest import ROOT

SESSION = b'{"sid": "a session that must stay private"}'


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> SharedState:
    if request.param == "memory":
        return MemoryState()
    server = request.getfixturevalue("redis_server")
    shared = RedisState(server.url)
    request.addfinalizer(shared.close)
    return shared


def blobs(state: SharedState, secret: bytes, namespace: str = "account-1") -> SealedBlobs:
    return SealedBlobs(state, secret, "mega-session", namespace)


def test_a_sealed_blob_opens_only_with_its_secret(state: SharedState) -> None:
    blobs(state, b"mega:user@example.com:password").put("session", SESSION)
    assert blobs(state, b"mega:user@example.com:password").get("session") == SESSION
    # Another secret under the same name (a changed password): missing, until replaced.
    changed = blobs(state, b"mega:user@example.com:new password")
    assert changed.get("session") is None
    changed.put("session", b"the new session")
    assert changed.get("session") == b"the new session"
    assert blobs(state, b"mega:user@example.com:password").get("session") is None
    # Another namespace is another entry altogether.
    assert blobs(state, b"mega:user@example.com:new password", "account-2").get("session") is None


def test_the_key_name_carries_only_the_namespace(redis_server) -> None:
    shared = RedisState(redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    names = []
    for secret in (b"one password", b"another password"):
        blobs(shared, secret).put("session", SESSION)
        names.append(sorted(raw.keys("paimon:blob:*")))
    assert names[0] == names[1] == [b"paimon:blob:mega-session:account-1:session"]
    shared.close()
    raw.close()


def test_redis_holds_only_ciphertext(redis_server) -> None:
    shared = RedisState(redis_server.url)
    blobs(shared, b"credentials").put("session", SESSION, ttl_seconds=60)
    raw = redis.Redis.from_url(redis_server.url)
    keys = raw.keys("paimon:blob:*")
    assert len(keys) == 1
    stored = raw.get(keys[0])
    assert b"private" not in stored and b"sid" not in stored
    assert 0 < raw.ttl(keys[0]) <= 60
    # Tampering makes the value read as missing, not as garbage.
    raw.set(keys[0], stored[:-4] + b"AAAA")
    assert blobs(shared, b"credentials").get("session") is None
    shared.close()


def test_a_lock_is_exclusive_and_waits_only_as_long_as_asked(state: SharedState) -> None:
    holder_has_it = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with state.lock("login", hold_seconds=30, wait_seconds=1):
            holder_has_it.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_has_it.wait(10)
    started = time.monotonic()
    with pytest.raises(LockTimeout), state.lock("login", hold_seconds=30, wait_seconds=0.3):
        pass
    assert time.monotonic() - started < 5
    release.set()
    holder.join(10)
    with state.lock("login", hold_seconds=30, wait_seconds=1):
        pass


def test_counters_count_and_expire(state: SharedState) -> None:
    assert [state.incr("uses:x", ttl_seconds=1) for _ in range(3)] == [1, 2, 3]
    deadline = time.monotonic() + 5
    while state.incr("uses:x", ttl_seconds=1) != 1:
        assert time.monotonic() < deadline, "the counter never expired"
        time.sleep(0.2)


def test_an_unreachable_redis_fails_fast_and_recovers(redis_server, caplog) -> None:
    shared = RedisState(redis_server.url)
    assert shared.problem() is None
    redis_server.stop()
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(SharedStateUnavailable):
            shared.incr("k", 60)
    # Only the first call waited for the connection to fail; the rest were refused at once.
    assert time.monotonic() - started < 5
    assert "unreachable" in (shared.problem() or "")
    assert sum("Redis unreachable" in r.getMessage() for r in caplog.records) == 1
    redis_server.start()
    deadline = time.monotonic() + 10
    while shared.problem() is not None:
        assert time.monotonic() < deadline, "Redis never came back"
        time.sleep(0.2)
    assert shared.incr("k", 60) == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    shared.close()


def test_deploy_files_share_one_redis_between_several_instances() -> None:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    web = next(s for s in blueprint["services"] if s["type"] == "web")
    store = next(s for s in blueprint["services"] if s["type"] == "keyvalue")
    assert web["numInstances"] >= 2
    assert store["maxmemoryPolicy"] == "noeviction", "an evicted counter would reset a limit"
    assert store["ipAllowList"] == [], "only the account's own services may reach it"
    redis_url = next(e for e in web["envVars"] if e["key"] == "REDIS_URL")["fromService"]
    assert redis_url == {"type": "keyvalue", "name": store["name"], "property": "connectionString"}

    text = (ROOT / "DEPLOYMENT.md").read_text()
    compose = yaml.safe_load(re.search(r"```yaml\n(x-paimon:.*?)```", text, re.S).group(1))
    instances = [s for s in compose["services"].values() if s.get("image") == "paimon-server"]
    assert len(instances) == 2
    assert all(s["environment"]["REDIS_URL"] == "redis://redis:6379/0" for s in instances)
    assert "redis-server" in compose["services"]["redis"]["command"]
    proxy_ip = compose["services"]["proxy"]["networks"]["default"]["ipv4_address"]
    assert all(s["environment"]["FORWARDED_ALLOW_IPS"] == proxy_ip for s in instances)
    assert "reverse_proxy paimon-1:8080 paimon-2:8080" in text
