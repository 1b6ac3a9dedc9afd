"""Who is calling, and what one upload of theirs may do: decided here, once.

``Gatekeeper.identify`` turns a token or ticket into a ``Caller`` (with the brake on
wrong guesses); ``file_limit`` is the one place the largest file a caller may store is
computed; ``check_target`` says whether the caller may upload to that service under that
name; ``take`` takes the upload from the caller's allowances. The API layer runs these
in order and hands one admission object down; nothing later computes a limit again.
``expiry`` is the one place an upload's lifetime is decided, ``record_scope`` the one
place whose uploads a caller may list and delete.
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass

from app.access.brake import AuthBrake
from app.access.errors import (
    InvalidTicket,
    InvalidToken,
    MayNotList,
    NoCredential,
    ServiceNotAllowed,
    TicketWrongFile,
)
from app.access.limits import Allowances, Grant
from app.access.tickets import Ticket, check_issuer, is_ticket, read_ticket
from app.access.tokens import TokenPolicy, TokenRegistry

DAY_S = 24 * 3600


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a named token, or a ticket acting for its issuer's name."""

    policy: TokenPolicy
    ticket: Ticket | None = None

    @property
    def name(self) -> str:
        return self.policy.name


@dataclass
class Gatekeeper:
    """The access decisions of one service: identity, limits and allowances.

    Blocking (the brake, tickets and allowances may live in Redis): call it from a
    worker thread.
    """

    tokens: TokenRegistry
    brake: AuthBrake
    allowances: Allowances
    max_upload_bytes: int
    ticket_secret: str | None
    default_expiry_days: float | None = None

    def identify(self, offered: str | None, address: str, continuing: bool = False) -> Caller:
        """The caller behind ``offered``; an access error naming what is wrong otherwise,
        and ``TooManyFailures`` after too many wrong credentials from ``address``.

        ``continuing``: the request continues an upload begun earlier, which has its own
        expiry and is found only by the ticket that began it, so that ticket may have
        expired since (a player resuming the next day); its issuer must still stand
        behind it."""
        if not offered:
            raise NoCredential("an auth token is required")
        self.brake.check(address)
        try:
            return self._caller(offered, continuing)
        except (InvalidToken, InvalidTicket):
            self.brake.failed(address)
            raise

    def check_secret(self, offered: str | None, expected: str, address: str) -> None:
        """The same brake for a single configured secret (e.g. METRICS_TOKEN)."""
        if not offered:
            raise NoCredential("a token is required")
        self.brake.check(address)
        if not hmac.compare_digest(offered.encode(), expected.encode()):
            self.brake.failed(address)
            raise InvalidToken("the token is not valid")

    def _caller(self, offered: str, continuing: bool) -> Caller:
        if is_ticket(offered):
            return self._ticket_caller(offered, continuing)
        policy = self.tokens.lookup(offered)
        if policy is None:
            raise InvalidToken("the auth token is not valid")
        return Caller(policy)

    def _ticket_caller(self, offered: str, continuing: bool) -> Caller:
        secret = self.ticket_secret
        if secret is None:
            raise InvalidTicket("this service does not accept tickets")
        ticket = read_ticket(secret, offered, time.time(), expired_ok=continuing)
        issuer = check_issuer(secret, ticket, self.tokens.by_name(ticket.issuer))
        return Caller(issuer, ticket)

    def file_limit(self, caller: Caller) -> int:
        """The largest file ``caller`` may store: the smallest of MAX_UPLOAD_BYTES, the
        token's own ``max_upload_bytes`` and ``bytes_per_day`` (a file can never be larger
        than a whole day's quota), and the ticket's ``max_bytes``."""
        limits = [
            self.max_upload_bytes,
            caller.policy.max_upload_bytes,
            caller.policy.bytes_per_day,
        ]
        if caller.ticket is not None:
            limits.append(caller.ticket.max_bytes)
        return min(value for value in limits if value is not None)

    def check_target(self, caller: Caller, service: str, filename: str | None) -> None:
        """Whether ``caller`` may upload to ``service`` under ``filename`` (None: the name
        comes with the body, as in a multipart form)."""
        if not caller.policy.allows_service(service):
            raise ServiceNotAllowed(f"token {caller.name!r} may not upload to {service[:40]!r}")
        wanted = caller.ticket.filename if caller.ticket else None
        if wanted is None:
            return
        if filename is None:
            raise TicketWrongFile(
                f"this ticket is for one file: upload it with PUT /files/{wanted}"
            )
        if filename != wanted:
            raise TicketWrongFile(f"this ticket is only for the file {wanted!r}")

    def expiry(self, caller: Caller, requested_s: float | None) -> int | None:
        """Seconds an upload is kept (None: until deleted): what the request asks for, else
        the token's ``default_expiry_days``, else DEFAULT_EXPIRY_DAYS; never more than the
        token's ``max_expiry_days``."""
        policy = caller.policy
        seconds = requested_s
        if seconds is None:
            days = policy.default_expiry_days or self.default_expiry_days
            seconds = days * DAY_S if days else None
        if policy.max_expiry_days is not None:
            cap = policy.max_expiry_days * DAY_S
            seconds = cap if seconds is None else min(seconds, cap)
        return None if seconds is None else max(1, math.ceil(seconds))

    @staticmethod
    def may_list(caller: Caller) -> bool:
        """Whether the caller may list uploads (a ticket never may: it only uploads)."""
        policy = caller.policy
        return caller.ticket is None and (policy.can_list or policy.can_manage)

    def record_scope(self, caller: Caller) -> str | None:
        """Whose uploads the caller may list and delete: None for everyone's
        (``can_manage``), its own token name (``can_list``); ``MayNotList`` otherwise.
        AUTH_TOKEN (``default``) has neither: it ships inside clients anyone can open."""
        if not self.may_list(caller):
            raise MayNotList(
                f"token {caller.name!r} may only upload; listing and deleting uploads need "
                "can_list or can_manage"
            )
        return None if caller.policy.can_manage else caller.name

    def take(self, caller: Caller, declared: int | None) -> Grant:
        """Take one upload of ``declared`` bytes (None: not known) from the caller's
        allowances; a refusal takes nothing."""
        return self.allowances.admit(caller.policy, caller.ticket, declared)
