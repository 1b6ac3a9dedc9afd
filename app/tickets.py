"""Upload tickets: short-lived, signed, self-contained upload rights (presigned-URL style).

A ticket is ``pt1.<payload>.<signature>``: the payload (base64url JSON) names its issuer,
expiry, use limit, byte limit and optional file name; the signature is HMAC-SHA256 over
it with ``TICKET_SECRET``. Any instance holding the secret can check a ticket without
asking anyone; only the count of uses lives in the shared store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

PREFIX = "pt1."


class TicketError(Exception):
    """A ticket that cannot be used; ``status`` and ``code`` say why."""

    status = 403
    code = "invalid_ticket"


class TicketForged(TicketError):
    pass


class TicketExpired(TicketError):
    status = 401
    code = "ticket_expired"


@dataclass(frozen=True)
class Ticket:
    id: str
    issuer: str
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


def _signature(secret: str, payload: str) -> str:
    key = hashlib.sha256(b"paimon-server ticket v1" + secret.encode()).digest()
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def issue_ticket(
    secret: str,
    issuer: str,
    expires_at: int,
    max_uses: int,
    max_bytes: int | None = None,
    filename: str | None = None,
) -> tuple[str, Ticket]:
    """A new ticket and its text, signed with ``secret``."""
    ticket = Ticket(secrets.token_urlsafe(12), issuer, expires_at, max_uses, max_bytes, filename)
    payload = _b64(json.dumps(asdict(ticket), separators=(",", ":")).encode())
    return f"{PREFIX}{payload}.{_signature(secret, payload)}", ticket


def read_ticket(secret: str, text: str, now: float) -> Ticket:
    """The ticket ``text`` carries; TicketForged or TicketExpired if it may not be used."""
    payload, _, signature = text.removeprefix(PREFIX).partition(".")
    if not hmac.compare_digest(signature.encode(), _signature(secret, payload).encode()):
        raise TicketForged("the ticket's signature is not valid (forged, altered or truncated)")
    try:
        ticket = Ticket(**json.loads(_unb64(payload)))
    except (ValueError, TypeError, binascii.Error):
        raise TicketForged("the ticket cannot be read") from None
    if now >= ticket.expires_at:
        raise TicketExpired(f"the ticket expired {int(now - ticket.expires_at)} s ago")
    return ticket
