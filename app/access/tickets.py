"""Upload tickets: short-lived, signed, self-contained upload rights (presigned-URL style).

A ticket is ``pt1.<payload>.<signature>``: the payload (base64url JSON) names its issuer,
the issuer's token (as a keyed digest, ``issuer_key``), expiry, use limit, byte limit and
optional file name; the signature is HMAC-SHA256 over it with ``TICKET_SECRET``. Any
instance holding the secret can check a ticket without asking anyone; only the count of
uses lives in the shared store.

``issuer_key`` binds a ticket to the token that issued it, not just to the token's name:
rotating or revoking a leaked token voids every ticket it issued.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

from app.access.errors import InvalidTicket, TicketExpired
from app.access.tokens import TokenPolicy

PREFIX = "pt1."


@dataclass(frozen=True)
class Ticket:
    id: str
    issuer: str
    issuer_key: str
    expires_at: int
    max_uses: int
    max_bytes: int | None = None
    filename: str | None = None


def is_ticket(credential: str) -> bool:
    return credential.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"paimon-server ticket v1{purpose}".encode() + secret.encode()).digest()


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(_key(secret, ""), payload.encode(), hashlib.sha256).digest())


def issuer_key(secret: str, issuer: TokenPolicy) -> str:
    """What a ticket records of its issuer's token: keyed, so the payload (readable by
    whoever holds the ticket) says nothing about the token."""
    mac = hmac.new(_key(secret, " issuer"), issuer.digest.encode(), hashlib.sha256)
    return _b64(mac.digest()[:16])


def issue_ticket(
    secret: str,
    issuer: TokenPolicy,
    expires_at: int,
    max_uses: int,
    max_bytes: int | None = None,
    filename: str | None = None,
) -> tuple[str, Ticket]:
    """A new ticket and its text, signed with ``secret``."""
    ticket = Ticket(
        secrets.token_urlsafe(12),
        issuer.name,
        issuer_key(secret, issuer),
        expires_at,
        max_uses,
        max_bytes,
        filename,
    )
    payload = _b64(json.dumps(asdict(ticket), separators=(",", ":")).encode())
    return f"{PREFIX}{payload}.{_signature(secret, payload)}", ticket


def read_ticket(secret: str, text: str, now: float, expired_ok: bool = False) -> Ticket:
    """The ticket ``text`` carries; InvalidTicket or TicketExpired if it may not be used.
    ``expired_ok``: an expired ticket still names its holder (to continue an upload it
    began, which has an expiry of its own)."""
    payload, _, signature = text.removeprefix(PREFIX).partition(".")
    if not hmac.compare_digest(signature.encode(), _signature(secret, payload).encode()):
        raise InvalidTicket("the ticket's signature is not valid (forged, altered or truncated)")
    try:
        ticket = Ticket(**json.loads(_unb64(payload)))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidTicket("the ticket cannot be read") from None
    if now >= ticket.expires_at and not expired_ok:
        raise TicketExpired(f"the ticket expired {int(now - ticket.expires_at)} s ago")
    return ticket


def check_issuer(secret: str, ticket: Ticket, issuer: TokenPolicy | None) -> TokenPolicy:
    """The issuer's current policy, if it still stands behind ``ticket``: the token that
    issued it is still in force, unrotated, and still allowed to issue tickets."""
    if issuer is None or not issuer.can_issue_tickets:
        raise InvalidTicket("the ticket's issuer is no longer valid")
    if not hmac.compare_digest(ticket.issuer_key, issuer_key(secret, issuer)):
        raise InvalidTicket("the ticket's issuer token was rotated or revoked")
    return issuer
