"""Upload tickets: issued by a token allowed to, used like a token, limited, checked anywhere."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from app.access.tickets import issue_ticket
from app.access.tokens import TokenPolicy, token_sha256
from tests.conftest import tokens_toml, write_in_place

ISSUER = "issuer-token-1f2e3d4c5b6a"
PLAIN = "plain-token-7a6b5c4d3e2f"
SECRET = "ticket-key-" + "k" * 30
WAIT_S = 15
PORTAL = TokenPolicy(name="portal", digest=token_sha256(ISSUER), can_issue_tickets=True)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(
        tokens_toml(
            portal={"secret": ISSUER, "can_issue_tickets": True, "uploads_per_minute": 100},
            plain={"secret": PLAIN},
        )
    )
    return path


@pytest.fixture
def client(make_client, tokens_file: Path):
    return make_client(tokens_file=tokens_file, ticket_secret=SECRET)


def new_ticket(http, token: str = ISSUER, **body) -> httpx.Response:
    return http.post("/tickets", json={"expires_in": 600, **body}, headers={"X-Auth-Token": token})


def put(http, credential: str, name: str = "t.txt", data: bytes = b"data") -> httpx.Response:
    return http.put(
        f"/files/{name}", content=data, headers={"Authorization": f"Bearer {credential}"}
    )


def test_a_ticket_uploads_like_a_token_until_its_uses_run_out(client) -> None:
    issued = new_ticket(client, max_uses=2)
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["max_uses"] == 2 and body["expires_at"].endswith("Z")
    ticket = body["ticket"]
    assert put(client, ticket).status_code == 200
    form = client.post("/upload", headers={"X-Auth-Token": ticket}, files={"file": ("f", b"x")})
    assert form.status_code == 200
    used_up = put(client, ticket)
    assert used_up.status_code == 429
    assert used_up.json()["code"] == "ticket_used_up"
    assert "used up" in used_up.json()["message"] and "2 upload" in used_up.json()["message"]


def test_expired_and_forged_tickets_say_which(client) -> None:
    expired, _ = issue_ticket(SECRET, PORTAL, int(time.time()) - 5, 1)
    answer = put(client, expired)
    assert answer.status_code == 401
    assert answer.json()["code"] == "ticket_expired" and "expired" in answer.json()["message"]

    ticket = new_ticket(client).json()["ticket"]
    payload, signature = ticket.rsplit(".", 1)
    for forged in (
        payload + "." + signature[::-1],
        issue_ticket("another service's secret " + "x" * 20, PORTAL, 2**40, 99)[0],
        ticket[:-3],
    ):
        answer = put(client, forged)
        assert answer.status_code == 403
        assert "signature is not valid" in answer.json()["message"]


def test_only_tokens_allowed_to_may_issue(client, make_client, tokens_file) -> None:
    assert new_ticket(client, token=PLAIN).status_code == 403
    ticket = new_ticket(client, max_uses=5).json()["ticket"]
    assert new_ticket(client, token=ticket).status_code == 403
    assert new_ticket(client, max_uses=0).status_code == 422
    disabled = make_client(tokens_file=tokens_file)
    answer = new_ticket(disabled)
    assert answer.status_code == 501 and "TICKET_SECRET" in answer.json()["message"]
    assert put(disabled, ticket).status_code == 403


def test_a_ticket_carries_its_size_and_name_limits(client) -> None:
    sized = new_ticket(client, max_uses=5, max_bytes=10).json()["ticket"]
    assert put(client, sized, data=b"x" * 10).status_code == 200
    assert put(client, sized, data=b"x" * 11).status_code == 413
    named = new_ticket(client, max_uses=5, filename="report.pdf").json()["ticket"]
    assert put(client, named, name="other.pdf").status_code == 403
    assert put(client, named, name="report.pdf").status_code == 200


def test_a_failed_upload_gives_the_ticket_its_use_back(client) -> None:
    ticket = new_ticket(client, max_uses=1, max_bytes=10).json()["ticket"]

    def too_much():  # no Content-Length: refused only once the bytes pass max_bytes
        yield b"x" * 8
        yield b"x" * 8

    refused = client.put("/files/t.txt", content=too_much(), headers={"X-Auth-Token": ticket})
    assert refused.status_code == 413
    assert put(client, ticket).status_code == 200
    assert put(client, ticket).status_code == 429


def test_revoking_the_issuer_revokes_its_tickets(client, tokens_file) -> None:
    ticket = new_ticket(client, max_uses=50).json()["ticket"]
    assert put(client, ticket).status_code == 200
    write_in_place(tokens_file, tokens_toml(plain={"secret": PLAIN}))
    deadline = time.monotonic() + WAIT_S
    while (answer := put(client, ticket)).status_code == 200:
        assert time.monotonic() < deadline, "the ticket outlived its issuer"
        time.sleep(0.2)
    assert answer.status_code == 403 and "issuer" in answer.json()["message"]


def test_rotating_the_issuers_token_voids_its_tickets(client, tokens_file) -> None:
    ticket = new_ticket(client, max_uses=50).json()["ticket"]
    assert put(client, ticket).status_code == 200
    # Same name, new token: what an operator does with a leaked issuer token.
    rotated = "rotated-issuer-token-9f8e7d6c"
    write_in_place(
        tokens_file,
        tokens_toml(
            portal={"secret": rotated, "can_issue_tickets": True, "uploads_per_minute": 100},
            plain={"secret": PLAIN},
        ),
    )
    deadline = time.monotonic() + WAIT_S
    while (answer := put(client, ticket)).status_code == 200:
        assert time.monotonic() < deadline, "the ticket outlived its issuer's rotation"
        time.sleep(0.2)
    assert answer.status_code == 403 and "rotated or revoked" in answer.json()["message"]
    # Tickets of the new token work.
    fresh = new_ticket(client, token=rotated).json()["ticket"]
    assert put(client, fresh).status_code == 200


def test_a_refused_ticket_spends_nothing_of_its_issuer(make_client, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        tokens_toml(kiosk={"secret": ISSUER, "can_issue_tickets": True, "uploads_per_minute": 2})
    )
    client = make_client(tokens_file=path, ticket_secret=SECRET)
    used_up = new_ticket(client, max_uses=1).json()["ticket"]
    assert put(client, used_up).status_code == 200
    for _ in range(4):  # refused: the ticket is used up
        assert put(client, used_up).json()["code"] == "ticket_used_up"
    # The issuer's second upload of the minute is still there.
    assert put(client, ISSUER).status_code == 200
    assert put(client, ISSUER).json()["code"] == "rate_limited"


def test_a_ticket_counts_under_its_issuers_name(make_client, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        tokens_toml(kiosk={"secret": ISSUER, "can_issue_tickets": True, "uploads_per_minute": 1})
    )
    client = make_client(tokens_file=path, ticket_secret=SECRET)
    labels = {"token": "kiosk", "limit": "uploads_per_minute"}
    before = REGISTRY.get_sample_value("paimon_limit_rejections_total", labels) or 0
    ticket = new_ticket(client, max_uses=5).json()["ticket"]
    assert put(client, ticket).status_code == 200
    limited = put(client, ticket)
    assert limited.status_code == 429 and "'kiosk'" in limited.json()["message"]
    assert int(limited.headers["Retry-After"]) > 0
    assert REGISTRY.get_sample_value("paimon_limit_rejections_total", labels) == before + 1


def test_max_uses_holds_across_instances_under_concurrent_use(
    live_server, redis_server, tokens_file, tmp_path: Path
) -> None:
    shared = {
        "TOKENS_FILE": str(tokens_file),
        "TICKET_SECRET": SECRET,
        "REDIS_URL": redis_server.url,
        # The ticket, not the upload slots, must be what refuses.
        "MAX_CONCURRENT_UPLOADS": "32",
    }
    servers = [
        live_server(TEMP_UPLOAD_DIR=str(tmp_path / f"spool-{i}"), **shared) for i in range(2)
    ]
    with httpx.Client(base_url=servers[0].url, timeout=WAIT_S) as http:
        ticket = new_ticket(http, max_uses=5).json()["ticket"]
    start = threading.Barrier(24)

    def attempt(i: int) -> int:
        with httpx.Client(base_url=servers[i % 2].url, timeout=WAIT_S) as http:
            start.wait(WAIT_S)
            answer = put(http, ticket, name=f"f{i}.txt")
            return answer.status_code if answer.status_code == 200 else answer.text

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(attempt, range(24)))
    assert statuses.count(200) == 5, str(Counter(statuses))
    assert len(set(statuses) - {200}) == 1, statuses  # the rest: all "used up"
    assert "used up" in next(s for s in statuses if s != 200)
