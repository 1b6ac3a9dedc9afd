"""Rate limits and quotas per token, shared by instances through Redis, and life without it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import tokens_toml

TOKEN = "limited-token-0a9b8c7d6e"
ISSUER = "issuer-token-5f4e3d2c1b"
SECRET = "ticket-key-" + "q" * 30
WAIT_S = 15


def put(http, token: str, data: bytes = b"data", name: str = "r.txt") -> httpx.Response:
    return http.put(f"/files/{name}", content=data, headers={"X-Auth-Token": token})


def test_uploads_per_minute_holds_exactly_across_instances(
    live_server, redis_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(game={"secret": TOKEN, "uploads_per_minute": 4}))
    env = {"TOKENS_FILE": str(path), "REDIS_URL": redis_server.url, "MAX_CONCURRENT_UPLOADS": "32"}
    servers = [live_server(TEMP_UPLOAD_DIR=str(tmp_path / f"spool-{i}"), **env) for i in range(2)]
    start = threading.Barrier(12)

    def attempt(i: int) -> httpx.Response:
        with httpx.Client(base_url=servers[i % 2].url, timeout=WAIT_S) as http:
            start.wait(WAIT_S)
            return put(http, TOKEN, name=f"f{i}.txt")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(attempt, range(12)))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 4, statuses
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(refused) == 8
    for answer in refused:
        assert answer.json()["code"] == "rate_limited"
        assert "'game'" in answer.json()["message"] and "4 uploads per minute" in answer.text
        assert 1 <= int(answer.headers["Retry-After"]) <= 60


def test_bytes_per_day_is_a_quota_with_what_is_left(make_client, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(daily={"secret": TOKEN, "bytes_per_day": 100}))
    client = make_client(tokens_file=path)
    assert put(client, TOKEN, b"x" * 60).status_code == 200
    over = put(client, TOKEN, b"x" * 50)
    assert over.status_code == 429
    assert over.json()["code"] == "quota_exceeded"
    assert "100 bytes per day" in over.json()["message"] and "40 bytes are left" in over.text
    assert int(over.headers["Retry-After"]) > 3600
    assert put(client, TOKEN, b"x" * 40).status_code == 200
    assert put(client, TOKEN, b"x").status_code == 429


def test_the_service_survives_redis_going_away_and_coming_back(
    live_server, redis_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        tokens_toml(
            portal={"secret": ISSUER, "can_issue_tickets": True},
            capped={"secret": TOKEN, "uploads_per_minute": 2},
        )
    )
    server = live_server(TOKENS_FILE=str(path), REDIS_URL=redis_server.url, TICKET_SECRET=SECRET)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        assert http.get("/ready").json()["shared_state"] == "redis"
        ticket = http.post(
            "/tickets", json={"expires_in": 600, "max_uses": 10}, headers={"X-Auth-Token": ISSUER}
        ).json()["ticket"]
        assert put(http, ticket).status_code == 200

        redis_server.stop()
        # Uploads go on; limits are counted per process, tickets wait for Redis.
        assert put(http, server.env["AUTH_TOKEN"]).status_code == 200
        assert [put(http, TOKEN).status_code for _ in range(3)] == [200, 200, 429]
        refused = put(http, ticket)
        assert refused.status_code == 503 and refused.json()["code"] == "tickets_unavailable"
        ready = http.get("/ready")
        assert ready.status_code == 200 and "unreachable" in ready.json()["shared_state"]
        assert str(redis_server.port) not in ready.text  # anyone may ask /ready

        redis_server.start()
        deadline = time.monotonic() + WAIT_S
        while http.get("/ready").json()["shared_state"] != "redis":
            assert time.monotonic() < deadline, "never noticed Redis was back"
            time.sleep(0.2)
        assert put(http, ticket).status_code == 200
    log = server.log()
    assert log.count("Redis unreachable") == 1, log
    assert "Redis reachable again" in log


def test_a_quota_holds_for_a_body_nobody_declared(make_client, tmp_path: Path) -> None:
    """Chunked bodies are charged as they arrive: stopped the moment they would pass
    the day's quota, with nothing stored and nothing kept counted."""
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(daily={"secret": TOKEN, "bytes_per_day": 10_000}))
    client = make_client(tokens_file=path)

    def chunked(total: int):
        for _ in range(total // 1000):
            yield b"x" * 1000

    first = client.put("/files/a.bin", content=chunked(6_000), headers={"X-Auth-Token": TOKEN})
    assert first.status_code == 200
    over = client.put("/files/b.bin", content=chunked(5_000), headers={"X-Auth-Token": TOKEN})
    assert over.status_code == 429 and over.json()["code"] == "quota_exceeded"
    assert "10000 bytes per day; 4000 bytes are left" in over.text
    # A whole day's quota is also the largest file, declared or not.
    huge = client.put("/files/c.bin", content=chunked(500_000), headers={"X-Auth-Token": TOKEN})
    assert huge.status_code == 413 and "10000 bytes" in huge.text
    declared = put(client, TOKEN, b"x" * 10_001)
    assert declared.status_code == 413 and "10000 bytes" in declared.text
    # What the refused upload had reserved was given back: 4,000 bytes are left.
    assert put(client, TOKEN, b"x" * 4_000).status_code == 200
    assert put(client, TOKEN, b"x").json()["code"] == "quota_exceeded"
    stored = sorted(p.stat().st_size for p in uploaded_files(tmp_path / "files"))
    assert stored == [4_000, 6_000]


def uploaded_files(root: Path) -> list[Path]:
    """The uploaded files: each in a folder of its own (records and locks are not)."""
    return [p for p in root.glob("*/*") if p.is_file() and len(p.parent.name) == 22]


def _parallel_puts(urls: list[str], count: int, size: int) -> list[int]:
    start = threading.Barrier(count)

    def attempt(i: int) -> int:
        with httpx.Client(base_url=urls[i % len(urls)], timeout=WAIT_S) as http:
            start.wait(WAIT_S)
            # Bytes of its own: the same bytes would be one stored file (README, "Records").
            data = f"{i:05d}".encode() * (size // 5)
            return put(http, TOKEN, data, name=f"p{i}.bin").status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(attempt, range(count)))


def test_a_quota_holds_exactly_under_concurrent_uploads(
    live_server, redis_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(daily={"secret": TOKEN, "bytes_per_day": 10_000}))
    env = {"TOKENS_FILE": str(path), "MAX_CONCURRENT_UPLOADS": "32"}
    # Two instances sharing Redis: 20 uploads of 5,000 bytes at once, room for 2.
    shared = [
        live_server(
            TEMP_UPLOAD_DIR=str(tmp_path / f"spool-{i}"),
            LOCAL_STORAGE_DIR=str(tmp_path / f"files-{i}"),
            REDIS_URL=redis_server.url,
            **env,
        )
        for i in range(2)
    ]
    statuses = _parallel_puts([server.url for server in shared], 20, 5_000)
    assert statuses.count(200) == 2 and statuses.count(429) == 18, statuses
    stored = [p for folder in tmp_path.glob("files-*") for p in uploaded_files(folder)]
    assert sum(p.stat().st_size for p in stored) == 10_000
    # One instance without Redis: the same, counted in the process.
    alone = live_server(
        TEMP_UPLOAD_DIR=str(tmp_path / "spool-alone"),
        LOCAL_STORAGE_DIR=str(tmp_path / "files-alone"),
        **env,
    )
    statuses = _parallel_puts([alone.url], 20, 5_000)
    assert statuses.count(200) == 2 and statuses.count(429) == 18, statuses
