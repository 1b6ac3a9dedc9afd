"""Upload records with the local backend: the same features as on MEGA, with the record
in a JSON file beside each stored file. Real server processes where processes matter;
the ASGI app for the rules themselves."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.storage.local import LocalBackend
from tests.conftest import ROOT, ServerProcess, tokens_toml
from tests.standins import FailingBackend
from tests.support.records import (
    Tokens,
    auth,
    curl,
    digest_field,
    listed,
    put_expecting_continue,
    wait_for_index,
)

TICKET_SECRET = secrets.token_urlsafe(32)
SLACK_S = 15


@pytest.fixture
def tokens() -> Tokens:
    return Tokens.fresh()


@pytest.fixture
def server(
    live_server: Callable[..., ServerProcess], tmp_path: Path, tokens: Tokens
) -> Callable[..., ServerProcess]:
    """A service process on local storage with the three tokens; ``issuer`` may issue
    tickets."""

    def start(**env: str | None) -> ServerProcess:
        path = tokens.write(
            tmp_path / "tokens.toml",
            issuer={"secret": tokens.uploader + "-issuer", "can_issue_tickets": True},
        )
        process = live_server(
            TOKENS_FILE=str(path), TICKET_SECRET=TICKET_SECRET, LOG_LEVEL="info", **env
        )
        wait_for_index(process.url, tokens.manager)
        return process

    return start


def stored_folders(server: ServerProcess) -> list[Path]:
    root = Path(server.env["LOCAL_STORAGE_DIR"])
    return sorted(path for path in root.iterdir() if path.is_dir() and len(path.name) == 22)


def put(server: ServerProcess, token: str, name: str, data: bytes, **params: Any) -> Any:
    response = httpx.put(
        f"{server.url}/files/{name}", headers=auth(token), content=data, params=params
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_three_tokens_and_a_ticket_on_local_storage(
    server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    service = server()
    default = service.env["AUTH_TOKEN"]
    mine = put(service, tokens.lister, "mine.txt", b"mine")
    theirs = put(service, tokens.uploader, "theirs.txt", b"theirs")
    form = httpx.post(
        f"{service.url}/upload", headers=auth(default), files={"file": ("mod.txt", b"mod")}
    ).json()
    assert list(form)[:5] == ["status", "message", "filename", "service", "link"]
    assert form["id"] and form["delete_url"].startswith(f"{service.url}/delete/{form['id']}/")
    ticket = httpx.post(
        f"{service.url}/tickets",
        headers=auth(tokens.uploader + "-issuer"),
        json={"expires_in": 600, "max_uses": 1},
    ).json()["ticket"]
    by_ticket = put(service, ticket, "ticket.txt", b"by ticket", expires_in=600)
    assert by_ticket["delete_url"] and by_ticket["expires_at"]

    for token in (default, tokens.uploader, ticket):
        refused = httpx.get(f"{service.url}/uploads", headers=auth(token))
        assert refused.status_code == 403 and refused.json()["code"] == "may_not_list"
    assert [row["id"] for row in listed(service.url, tokens.lister)] == [mine["id"]]
    theirs_url = f"{service.url}/uploads/{theirs['id']}"
    assert httpx.delete(theirs_url, headers=auth(tokens.lister)).status_code == 404
    rows = listed(service.url, tokens.manager)
    assert {row["token"] for row in rows} == {"lister", "uploader", "default", "issuer"}
    assert all(row["link"].startswith(service.url + "/files/") for row in rows)

    revoked = httpx.delete(f"{theirs_url}/link", headers=auth(tokens.manager))
    assert revoked.status_code == 200
    assert httpx.get(theirs["link"]).status_code == 404
    renewed = httpx.post(f"{theirs_url}/link", headers=auth(tokens.manager))
    assert renewed.json()["link"] != theirs["link"]
    assert httpx.get(renewed.json()["link"]).content == b"theirs"
    assert httpx.delete(theirs_url, headers=auth(tokens.manager)).status_code == 200
    assert httpx.get(renewed.json()["link"]).status_code == 404


def test_the_delete_url_takes_the_file_and_link_and_is_not_logged(
    server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    service = server()
    answer = put(service, tokens.uploader, "gone.txt", b"soon gone")
    secret = answer["delete_url"].rsplit("/", 1)[1]
    assert httpx.get(answer["link"]).content == b"soon gone"
    deleted = curl("-X", "DELETE", answer["delete_url"])
    assert deleted.status == 200 and deleted.body["removed"] == "file"
    assert httpx.get(answer["link"]).status_code == 404
    assert curl("-X", "DELETE", answer["delete_url"]).status == 404
    assert stored_folders(service) == []
    log = service.log()
    assert "/delete/" in log and secret not in log


def test_the_same_bytes_twice_share_one_file_until_the_last_reference_goes(
    server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    service = server()
    first = put(service, tokens.uploader, "a.bin", b"same bytes" * 1000)
    second = put(service, tokens.lister, "b.bin", b"same bytes" * 1000, expires_in=3600)
    assert (second["id"], second["link"]) == (first["id"], first["link"])
    assert len(stored_folders(service)) == 1
    assert curl("-X", "DELETE", first["delete_url"]).body["removed"] == "uploads"
    assert httpx.get(second["link"]).content == b"same bytes" * 1000
    assert curl("-X", "DELETE", second["delete_url"]).body["removed"] == "file"
    assert httpx.get(second["link"]).status_code == 404


def test_a_listing_token_declaring_a_digest_sends_no_body_and_a_wrong_digest_stores_nothing(
    server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    service = server()
    data = b"digest me" * 100_000
    stored = put(service, tokens.uploader, "d.bin", data)
    headers = {**auth(tokens.lister), "Repr-Digest": digest_field(data)}
    raw = put_expecting_continue(service.port, "/files/d2.bin", headers, data)
    assert raw.status == 200 and raw.interim == [] and raw.body_bytes_sent == 0
    assert json.loads(raw.body)["link"] == stored["link"]

    wrong = httpx.put(
        f"{service.url}/files/w.bin",
        headers={**auth(tokens.uploader), "Repr-Digest": digest_field(b"other")},
        content=b"these bytes",
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "digest_mismatch"
    assert hashlib.sha256(b"other").hexdigest() in wrong.json()["message"]
    assert len(stored_folders(service)) == 1
    assert len(listed(service.url, tokens.manager)) == 2  # the two uploads of d.bin


def test_expired_uploads_are_swept_while_serving_and_by_the_sweep_command(
    server: Callable[..., ServerProcess], tokens: Tokens
) -> None:
    service = server(SWEEP_INTERVAL_SECONDS="1")
    kept = put(service, tokens.uploader, "kept.txt", b"kept")
    short = put(service, tokens.uploader, "short.txt", b"short", expires_in=1)
    deadline = time.monotonic() + 1 + 1 + SLACK_S
    while httpx.get(short["link"]).status_code != 404:
        assert time.monotonic() < deadline, "the expired upload was not swept in time"
        time.sleep(0.2)
    assert httpx.get(kept["link"]).content == b"kept"

    later = put(service, tokens.uploader, "later.txt", b"later", expires_in=1)
    service.stop()
    time.sleep(1.5)
    swept = subprocess.run(
        [sys.executable, "server.py", "sweep"],
        cwd=ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert swept.returncode == 0, swept.stderr
    assert "1 expired files deleted" in swept.stdout
    root = Path(service.env["LOCAL_STORAGE_DIR"])
    assert not (root / later["id"]).exists() and (root / kept["id"]).exists()


def test_without_redis_each_gunicorn_worker_knows_the_others_uploads_within_the_refresh(
    live_server: Callable[..., ServerProcess], tmp_path: Path, tokens: Tokens
) -> None:
    argv = [sys.executable, "-m", "gunicorn", "server:app", "--workers", "2"]
    argv += ["--worker-class", "uvicorn_worker.UvicornWorker", "--bind", "127.0.0.1:{port}"]
    path = tokens.write(tmp_path / "tokens.toml")
    service = live_server(argv, TOKENS_FILE=str(path), INDEX_REFRESH_SECONDS="2")
    wait_for_index(service.url, tokens.manager)
    answer = put(service, tokens.uploader, "seen.txt", b"seen")
    uploaded = time.monotonic()
    # Connections are spread over the workers: every fresh one must list it soon.
    while True:
        seen = [
            any(row["id"] == answer["id"] for row in listed(service.url, tokens.manager))
            for _ in range(10)
        ]
        if all(seen):
            break
        assert time.monotonic() - uploaded < 2 + SLACK_S, "a worker's index lagged too long"
        time.sleep(0.2)


# -- the rules, through the ASGI app --------------------------------------------------------


@pytest.fixture
def rules_client(make_client: Callable[..., TestClient], tmp_path: Path, tokens: Tokens) -> Any:
    def make(**overrides: Any) -> TestClient:
        path = tmp_path / "tokens.toml"
        path.write_text(
            tokens_toml(
                lister={"secret": tokens.lister, "can_list": True},
                manager={"secret": tokens.manager, "can_manage": True},
                capped={"secret": tokens.uploader, "max_expiry_days": 1, "can_list": True},
                defaulted={"secret": tokens.uploader + "-d", "default_expiry_days": 0.5},
            )
        )
        client = make_client(tokens_file=path, public_base_url="https://files.example", **overrides)
        records = client.app.state.services.records
        assert records is not None and records.wait_until_ready(10)
        return client

    return make


def test_expiry_is_capped_by_the_token_and_defaulted_by_token_or_service(
    rules_client: Callable[..., TestClient], tokens: Tokens
) -> None:
    client = rules_client(default_expiry_days=2)
    now = time.time()

    def expires(token: str, **params: Any) -> float | None:
        answer = client.put("/files/x.txt", headers=auth(token), content=b"x", params=params)
        assert answer.status_code == 200, answer.text
        stamp = answer.json()["expires_at"]
        return None if stamp is None else _epoch(stamp) - now

    day = 86400
    assert expires(tokens.uploader, expires_in=10 * day) == pytest.approx(day, abs=5)
    assert expires(tokens.uploader) == pytest.approx(day, abs=5)  # the cap applies anyway
    assert expires(tokens.uploader + "-d") == pytest.approx(day / 2, abs=5)
    assert expires(tokens.lister) == pytest.approx(2 * day, abs=5)  # DEFAULT_EXPIRY_DAYS
    assert expires(tokens.lister, expires_in=0.5) == pytest.approx(1, abs=5)
    refused = client.put("/files/x.txt", headers=auth(tokens.lister), params={"expires_in": 0})
    assert refused.status_code == 422
    assert expires(client.app.state.services.settings.access.auth_token.get_secret_value()) == (
        pytest.approx(2 * day, abs=5)
    )


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_pages_are_newest_first_and_cursors_walk_them_without_repeats(
    rules_client: Callable[..., TestClient], tokens: Tokens
) -> None:
    client = rules_client()
    ids = []
    for index in range(7):
        token = tokens.lister if index % 2 else tokens.manager
        answer = client.put(f"/files/{index}.txt", headers=auth(token), content=str(index).encode())
        ids.append(answer.json()["id"])
        time.sleep(1.05)  # whole seconds apart: the order is the upload time's
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/uploads", headers=auth(tokens.manager), params=params).json()
        seen += [row["id"] for row in page["uploads"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    mine = client.get("/uploads", headers=auth(tokens.manager), params={"token": "lister"})
    assert [row["id"] for row in mine.json()["uploads"]] == [ids[5], ids[3], ids[1]]
    elsewhere = client.get("/uploads", headers=auth(tokens.manager), params={"service": "mega"})
    assert elsewhere.json()["uploads"] == []


def test_a_backend_that_keeps_no_records_answers_501_and_no_delete_url(
    make_client: Callable[..., TestClient], tmp_path: Path, tokens: Tokens
) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(manager={"secret": tokens.manager, "can_manage": True}))
    client = make_client(backend=FailingBackend(RuntimeError()), tokens_file=path)
    for method, route in [
        ("GET", "/uploads"),
        ("DELETE", "/uploads/abc"),
        ("POST", "/uploads/abc/link"),
        ("DELETE", "/delete/abc/key/secret"),
    ]:
        answer = client.request(method, route, headers=auth(tokens.manager))
        assert answer.status_code == 501, (route, answer.text)
        assert answer.json()["code"] == "not_supported"
    assert "/uploads" not in client.get("/openapi.json").json()["paths"]
    for params, headers in [({"expires_in": 60}, {}), ({}, {"Repr-Digest": digest_field(b"x")})]:
        refused = client.put(
            "/files/x.bin", params=params, headers={**auth(tokens.manager), **headers}, content=b"x"
        )
        assert refused.status_code == 501 and refused.json()["code"] == "not_supported"


def test_a_file_that_cannot_fit_is_507_before_its_body(
    make_client: Callable[..., TestClient], tmp_path: Path, auth: dict[str, str]
) -> None:
    from app.storage.base import Capabilities, Space

    class SmallDisk(LocalBackend):
        """Local storage that says it has little room left."""

        def capabilities(self) -> Capabilities:
            declared = super().capabilities()
            return Capabilities(
                stream=declared.stream,
                download=declared.download,
                records=declared.records,
                links=declared.links,
                space=self,
            )

        def space(self) -> Space:
            return Space(used=1_000_000, total=1_100_000)

    client = make_client(backend=SmallDisk(tmp_path / "small"))
    deadline = time.monotonic() + 10
    while client.get("/ready").json().get("storage") is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.get("/ready").json()["storage"]["free_bytes"] == 100_000
    too_big = client.put("/files/big.bin", headers=auth, content=b"x" * 100_001)
    assert too_big.status_code == 507 and too_big.json()["code"] == "storage_full"
    assert client.put("/files/fits.bin", headers=auth, content=b"x" * 100_000).status_code == 200


def test_token_flags_are_checked_when_the_file_is_read(tmp_path: Path) -> None:
    from app.access.tokens import TokensFileError, parse_tokens

    policies, _ = parse_tokens(
        tokens_toml(a={"secret": "s" * 20, "can_list": True, "max_expiry_days": 7}), 10**9
    )
    [policy] = policies.values()
    assert policy.can_list and not policy.can_manage and policy.max_expiry_days == 7
    bad = tokens_toml(b={"secret": "t" * 20, "default_expiry_days": 9, "max_expiry_days": 7})
    with pytest.raises(TokensFileError, match="default_expiry_days is larger"):
        parse_tokens(bad, 10**9)


def test_render_runs_the_sweep_as_a_cron_job_with_the_services_settings() -> None:
    import yaml

    services = yaml.safe_load((ROOT / "render.yaml").read_text())["services"]
    [web] = [s for s in services if s["type"] == "web"]
    [cron] = [s for s in services if s["type"] == "cron"]
    assert cron["startCommand"] == "python server.py sweep"
    assert cron["buildCommand"] == web["buildCommand"] and cron["schedule"]
    env = {item["key"]: item for item in cron["envVars"]}
    for key in ("MEGA_EMAIL", "MEGA_PASSWORD", "MEGA_FOLDER"):
        assert env[key]["fromService"]["envVarKey"] == key  # never a second copy
    assert env["REDIS_URL"]["fromService"]["type"] == "keyvalue"  # the shared sweep lock
