"""GET /metrics adds up every gunicorn worker; JSON logs carry request ids and token names."""

from __future__ import annotations

import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import tokens_toml
from tests.support.metrics import samples, value

NAMED = "named-token-3c4d5e6f7a8b"
WAIT_S = 15
GUNICORN = [sys.executable, "-m", "gunicorn", "server:app", "--config", "gunicorn.conf.py"]
GUNICORN += ["--bind", "127.0.0.1:{port}"]


def json_lines(log: str) -> list[dict]:
    lines = [line for line in log.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be one JSON object


def test_metrics_count_what_was_done_across_two_gunicorn_workers(
    live_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(small={"secret": NAMED, "max_upload_bytes": 1000}))
    server = live_server(GUNICORN, WEB_CONCURRENCY="2", TOKENS_FILE=str(path), LOG_FORMAT="json")
    default = {"X-Auth-Token": server.env["AUTH_TOKEN"]}
    done: Counter[tuple[str, str]] = Counter()
    stored_bytes = 0

    def one(i: int) -> tuple[str, str, int]:
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
            if i % 4 == 0:
                answer = http.post("/upload", headers=default, files={"file": ("f", b"m" * i)})
                method = "multipart"
            elif i % 4 == 1:
                answer = http.put("/files/r", headers={"X-Auth-Token": "not-a-token-at-all"})
                method = "raw"
            elif i % 4 == 2:
                answer = http.put(
                    "/files/big", headers={"X-Auth-Token": NAMED}, content=b"b" * 2000
                )
                method = "raw"
            else:
                answer = http.put("/files/ok", headers=default, content=b"r" * i)
                method = "raw"
        outcome = "success" if answer.status_code == 200 else answer.json()["code"]
        return method, outcome, answer.json().get("size", 0)

    # Sent at once on fresh connections, so that both workers take some; more rounds if
    # one worker happened to take them all.
    for _ in range(5):
        with ThreadPoolExecutor(8) as pool:
            for method, outcome, size in pool.map(one, range(16)):
                done[(method, outcome)] += 1
                stored_bytes += size if outcome == "success" else 0
        logged = json_lines(server.log())
        workers = {line["pid"] for line in logged if "upload" in line}
        if len(workers) >= 2:
            break
    assert len(workers) == 2, "one worker took every upload five times over"
    assert set(done) == {
        ("multipart", "success"),
        ("raw", "invalid_token"),
        ("raw", "too_large"),
        ("raw", "success"),
    }

    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        answers = [http.get("/metrics", headers={"Connection": "close"}) for _ in range(6)]
    assert all(a.status_code == 200 for a in answers)
    for answer in answers:  # whichever worker answers, the numbers are everyone's
        found = samples(answer.text)
        for (method, outcome), count in done.items():
            labels = {"backend": "local", "method": method, "outcome": outcome}
            assert value(found, "paimon_uploads_total", **labels) == count, (method, outcome)
        assert value(found, "paimon_upload_bytes_total", backend="local") == stored_bytes
        total = sum(
            value(found, "paimon_upload_duration_seconds_count", backend="local", result=result)
            for result in ("success", "error")
        )
        assert total == sum(done.values())
        assert value(found, "paimon_uploads_in_flight") == 0

    summaries = [line for line in json_lines(server.log()) if "upload" in line]
    assert len(summaries) == sum(done.values())
    by_outcome: Counter[str] = Counter()
    for (_, outcome), count in done.items():
        by_outcome[outcome] += count
    assert Counter(line["upload"]["outcome"] for line in summaries) == by_outcome
    assert server.env["AUTH_TOKEN"] not in server.log() and NAMED not in server.log()


def test_metrics_token_protects_the_metrics(make_client) -> None:
    metrics_token = "metrics-reader-0b1c2d3e4f"
    client = make_client(metrics_token=metrics_token)
    assert client.get("/metrics").status_code == 401
    assert (
        client.get("/metrics", headers={"Authorization": "Bearer wrong-one-123456"}).status_code
        == 403
    )
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    assert answer.status_code == 200
    assert "paimon_uploads_total" in answer.text
    assert make_client().get("/metrics").status_code == 200


def test_guessing_the_metrics_token_is_braked(make_client) -> None:
    metrics_token = "metrics-reader-0b1c2d3e4f"
    client = make_client(metrics_token=metrics_token, auth_failures_per_minute=5)
    wrong = {"Authorization": "Bearer metrics-guess-0000000000"}
    statuses = [client.get("/metrics", headers=wrong).status_code for _ in range(8)]
    assert statuses == [403] * 5 + [429] * 3
    braked = client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    assert braked.status_code == 429  # no answer tells a guesser it has found the token
    assert braked.json()["code"] == "too_many_failures" and int(braked.headers["Retry-After"]) > 0


def test_json_logs_carry_request_id_and_token_name_never_the_token(
    live_server, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(kiosk={"secret": NAMED}))
    server = live_server(TOKENS_FILE=str(path), LOG_FORMAT="json")
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        answer = http.put(
            "/files/photo.jpg",
            content=b"j" * 1234,
            headers={"X-Auth-Token": NAMED, "X-Request-ID": "client-req-42"},
        )
        assert answer.status_code == 200
        assert answer.headers["X-Request-ID"] == "client-req-42"
        generated = http.get("/health").headers["X-Request-ID"]
        assert len(generated) == 32
        weird = http.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
        assert weird.headers["X-Request-ID"] != "bad id\twith spaces"
    lines = json_lines(server.log())
    summary = next(line for line in lines if "upload" in line)
    assert summary["request_id"] == "client-req-42"
    assert summary["token"] == "kiosk"
    upload = summary["upload"]
    assert upload["name"] == "photo.jpg" and upload["size"] == 1234
    assert upload["backend"] == "local" and upload["outcome"] == "success"
    assert upload["duration_s"] >= 0
    assert NAMED not in server.log()
