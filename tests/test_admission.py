"""The admission decision: who is calling, the one size limit, and the allowances it takes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.access.admission import Caller, Gatekeeper
from app.access.brake import AuthBrake
from app.access.errors import (
    InvalidTicket,
    InvalidToken,
    NoCredential,
    QuotaExceeded,
    RateLimited,
    ServiceNotAllowed,
    TicketUsedUp,
    TicketWrongFile,
    TooManyFailures,
)
from app.access.limits import Allowances
from app.access.tickets import issue_ticket
from app.access.tokens import TokenRegistry
from app.shared_state import MemoryState
from tests.conftest import tokens_toml, write_in_place

SMALL = "small-token-0a1b2c3d4e"
ISSUER = "issuer-token-5f6e7d8c9b"
SECRET = "ticket-secret-" + "s" * 30
GLOBAL = 1_000_000


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(
        tokens_toml(
            small={"secret": SMALL, "max_upload_bytes": 5000, "bytes_per_day": 8000,
                   "services": ["local"]},
            issuer={"secret": ISSUER, "can_issue_tickets": True, "uploads_per_minute": 3},
        )
    )  # fmt: skip
    return path


@pytest.fixture
def gate(tokens_file: Path) -> Gatekeeper:
    state = MemoryState()
    tokens = TokenRegistry("default-token-" + "d" * 20, tokens_file, GLOBAL)
    return Gatekeeper(tokens, AuthBrake(3, state), Allowances(state), GLOBAL, SECRET)


def ticket_for(gate: Gatekeeper, **limits: object) -> str:
    issuer = gate.identify(ISSUER, "10.0.0.1").policy
    text, _ = issue_ticket(SECRET, issuer, int(time.time()) + 600, **limits)  # type: ignore[arg-type]
    return text


def test_the_file_limit_is_the_smallest_that_applies(gate: Gatekeeper) -> None:
    default = gate.identify("default-token-" + "d" * 20, "10.0.0.1")
    assert gate.file_limit(default) == GLOBAL
    small = gate.identify(SMALL, "10.0.0.1")
    assert gate.file_limit(small) == 5000  # its own limit, under its 8000 bytes a day
    ticket = gate.identify(ticket_for(gate, max_uses=1, max_bytes=700), "10.0.0.1")
    assert gate.file_limit(ticket) == 700
    assert gate.file_limit(gate.identify(ticket_for(gate, max_uses=1), "10.0.0.1")) == GLOBAL


def test_identify_says_what_is_wrong_and_brakes_guessing(gate: Gatekeeper) -> None:
    with pytest.raises(NoCredential):
        gate.identify(None, "10.0.0.2")
    for _ in range(3):
        with pytest.raises(InvalidToken):
            gate.identify("wrong-token-000000000", "10.0.0.2")
    with pytest.raises(TooManyFailures) as braked:
        gate.identify(SMALL, "10.0.0.2")  # even the right token, from that address
    assert braked.value.retry_after and braked.value.retry_after > 0
    assert gate.identify(SMALL, "10.0.0.3").name == "small"  # other addresses unaffected


def test_a_rotated_issuer_voids_its_tickets(gate: Gatekeeper, tokens_file: Path) -> None:
    ticket = ticket_for(gate, max_uses=5)
    assert gate.identify(ticket, "10.0.0.1").ticket is not None
    write_in_place(
        tokens_file, tokens_toml(issuer={"secret": "rotated-" + ISSUER, "can_issue_tickets": True})
    )
    gate.tokens.request_reload()
    with pytest.raises(InvalidTicket, match="rotated or revoked"):
        gate.identify(ticket, "10.0.0.1")


def test_the_target_must_be_allowed(gate: Gatekeeper) -> None:
    small = gate.identify(SMALL, "10.0.0.1")
    gate.check_target(small, "local", "a.txt")
    with pytest.raises(ServiceNotAllowed):
        gate.check_target(small, "mega", "a.txt")
    named = gate.identify(ticket_for(gate, max_uses=1, filename="r.pdf"), "10.0.0.1")
    gate.check_target(named, "local", "r.pdf")
    with pytest.raises(TicketWrongFile, match=r"PUT /files/r\.pdf"):
        gate.check_target(named, "local", None)
    with pytest.raises(TicketWrongFile):
        gate.check_target(named, "local", "other.pdf")


def test_a_refused_upload_takes_nothing(gate: Gatekeeper) -> None:
    issuer = gate.identify(ISSUER, "10.0.0.1")
    once = gate.identify(ticket_for(gate, max_uses=1), "10.0.0.1")
    gate.take(once, None).settle(stored=True, size=1)
    for _ in range(5):
        with pytest.raises(TicketUsedUp):
            gate.take(once, None)
    # The issuer's 3 uploads a minute: one went to the ticket, two are left.
    gate.take(issuer, None)
    gate.take(issuer, None)
    with pytest.raises(RateLimited):
        gate.take(issuer, None)


def test_a_quota_reserves_declared_bytes_and_meters_the_rest(gate: Gatekeeper) -> None:
    small = gate.identify(SMALL, "10.0.0.1")
    declared = gate.take(small, 3000)
    metered = gate.take(small, None)
    metered.need(4000)
    with pytest.raises(QuotaExceeded, match="1000 bytes are left") as refused:
        metered.need(5001)  # 3000 + 5001 would pass 8000
    assert refused.value.retry_after and refused.value.retry_after > 3600
    metered.settle(stored=False, size=0)  # failed: everything it reserved comes back
    declared.settle(stored=True, size=2500)  # stored less than declared: the rest back
    left = gate.take(small, 5500)  # 8000 - 2500
    with pytest.raises(QuotaExceeded):
        gate.take(small, 1)
    left.settle(stored=True, size=5500)


def test_a_quota_holds_exactly_under_concurrency(gate: Gatekeeper) -> None:
    small = gate.identify(SMALL, "10.0.0.1")
    start = threading.Barrier(16)

    def attempt(_: int) -> bool:
        start.wait(10)
        try:
            grant = gate.take(small, 1000)
        except QuotaExceeded:
            return False
        grant.settle(stored=True, size=1000)
        return True

    with ThreadPoolExecutor(16) as pool:
        admitted = list(pool.map(attempt, range(16)))
    assert admitted.count(True) == 8


def test_a_caller_is_its_policy_and_ticket(gate: Gatekeeper) -> None:
    caller = gate.identify(SMALL, "10.0.0.1")
    assert caller == Caller(caller.policy) and caller.name == "small"
