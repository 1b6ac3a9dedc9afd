"""A token's allowances: uploads per minute, bytes per day, and a ticket's uses.

Each holds exactly, across workers and instances (in Redis when ``REDIS_URL`` is set)
and under concurrency:

- ``bytes_per_day`` is a window of 24 hours that starts with the first byte counted in
  it. A declared size is reserved atomically at admission; bytes nobody declared are
  reserved as they arrive, and the upload stops (``QuotaExceeded``, nothing stored) the
  moment one would pass the limit. When the upload ends, what it stored stays counted
  and the rest of its reservation is given back.
- A ticket's ``max_uses`` is reserved the same way, and given back when nothing was
  stored (a failed upload may be tried again).
- ``uploads_per_minute`` is a moving window (no burst of twice the limit at a minute's
  edge), counted by the ``limits`` library, last: so a request refused by another limit
  never spends it, and a refused request takes nothing from any allowance.

Without Redis (not configured, or unreachable) the counting happens per process. When a
configured Redis is unreachable, limits fail open to that per-process counting (the
service keeps serving, each worker still enforces the limits on its own) while tickets
fail closed: a ticket's use count cannot be checked, so the ticket is refused.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.strategies import MovingWindowRateLimiter

from app.access.errors import QuotaExceeded, RateLimited, TicketsUnavailable, TicketUsedUp
from app.access.tickets import Ticket
from app.access.tokens import TokenPolicy
from app.shared_state import (
    MemoryState,
    Reserved,
    SharedCounters,
    SharedState,
    SharedStateUnavailable,
)

DAY_SECONDS = 24 * 3600
# Use counts outlive the ticket's expiry a little, so a clock step between instances
# cannot bring a used-up ticket back.
TICKET_COUNT_GRACE_SECONDS = 300


class Allowances:
    """Admission of uploads by the limits of the token (or a ticket's issuer)."""

    def __init__(self, state: SharedState) -> None:
        self._state = state
        # Where bytes are counted while a configured Redis is out of reach.
        self._local = MemoryState() if state.kind != "memory" else state
        self._per_minute = SharedCounters(state, MovingWindowRateLimiter).count

    def admit(self, policy: TokenPolicy, ticket: Ticket | None, declared: int | None) -> Grant:
        """Take one upload of ``declared`` bytes (None: not known yet) from the allowances
        of ``policy`` and ``ticket``; the first that refuses raises, and whatever was
        taken before it is given back."""
        grant = Grant(self, policy, ticket)
        try:
            if ticket is not None:
                grant.use_ticket()
            if declared:
                grant.need(declared)
            self._count_start(policy)
        except BaseException:
            grant.settle(stored=False, size=0)
            raise
        return grant

    def _count_start(self, policy: TokenPolicy) -> None:
        if policy.uploads_per_minute is None:
            return
        minute = RateLimitItemPerMinute(policy.uploads_per_minute)
        if self._per_minute(lambda c: c.hit(minute, "uploads", policy.name)):
            return
        stats = self._per_minute(lambda c: c.get_window_stats(minute, "uploads", policy.name))
        raise RateLimited(
            f"rate limit: token {policy.name!r} may start {policy.uploads_per_minute} "
            "uploads per minute",
            _seconds_until(stats.reset_time),
        )

    def settle(self, held: Reservation, stored: bool, size: int) -> Reservation:
        """An upload ended: keep ``size`` bytes counted if it was stored, give back the rest
        of ``held``, and the ticket's use when nothing was stored; what is still held."""
        keep = size if stored else 0
        reserved, ticket_id = held.reserved, held.ticket_id
        if reserved > keep:
            spare, key = reserved - keep, _quota_key(held.token)
            self._bytes(lambda state: state.release(key, spare))
            reserved = keep
        if ticket_id is not None and not stored:
            # Out of reach, the use stays counted: safe, and the ticket's owner may ask again.
            with contextlib.suppress(SharedStateUnavailable):
                self._state.release(_ticket_key(ticket_id), 1)
            ticket_id = None
        return Reservation(held.token, reserved, ticket_id)

    def _bytes(self, operation: Callable[[SharedState], Reserved | None]) -> Reserved | None:
        """``operation`` on the shared byte counters, or this process's while Redis is away."""
        try:
            return self._state.run(lambda: operation(self._state))
        except SharedStateUnavailable:
            return operation(self._local)

    def _tickets(self, operation: Callable[[SharedState], Reserved | None]) -> Reserved | None:
        try:
            return operation(self._state)
        except SharedStateUnavailable:
            raise TicketsUnavailable(
                "tickets cannot be checked right now (shared state unreachable); try again later"
            ) from None


@dataclass
class Grant:
    """What one admitted upload holds of its caller's allowances until it ``settle``s.

    It is also the upload's meter (``app.intake.body.Meter``): ``need`` reserves the bytes
    of a file whose size was not declared as they arrive.
    """

    allowances: Allowances
    policy: TokenPolicy
    ticket: Ticket | None
    reserved: int = 0
    ticket_used: bool = False

    def use_ticket(self) -> None:
        ticket = self.ticket
        assert ticket is not None
        taken = self.allowances._tickets(
            lambda state: state.reserve(
                _ticket_key(ticket.id), 1, ticket.max_uses, _count_ttl(ticket)
            )
        )
        assert taken is not None
        if not taken.granted:
            raise TicketUsedUp(
                f"the ticket has been used up: it allows {ticket.max_uses} upload(s)"
            )
        self.ticket_used = True

    def need(self, total: int) -> None:
        """The file has ``total`` bytes so far: reserve what is not reserved yet, or raise
        ``QuotaExceeded`` when the day has no room for it."""
        day = self.policy.bytes_per_day
        if day is None or total <= self.reserved:
            return
        wanted = total - self.reserved
        key = _quota_key(self.policy.name)
        taken = self.allowances._bytes(lambda state: state.reserve(key, wanted, day, DAY_SECONDS))
        assert taken is not None
        if not taken.granted:
            left = max(0, day - taken.used)
            raise QuotaExceeded(
                f"daily quota: token {self.policy.name!r} may upload {day} bytes per day; "
                f"{left} bytes are left",
                max(1, math.ceil(taken.resets_in)),
            )
        self.reserved = total

    def settle(self, stored: bool, size: int) -> None:
        """The upload ended: keep ``size`` bytes counted if it was stored, give back the
        rest of the reservation, and the ticket's use when nothing was stored."""
        left = self.allowances.settle(self.reservation(), stored, size)
        self.reserved, self.ticket_used = left.reserved, left.ticket_id is not None

    def reservation(self) -> Reservation:
        """What this grant holds, in a form that outlives the request (a tus upload)."""
        ticket_id = self.ticket.id if self.ticket_used and self.ticket is not None else None
        return Reservation(self.policy.name, self.reserved, ticket_id)


@dataclass(frozen=True)
class Reservation:
    """What an admitted upload holds of its caller's allowances, by name only: it can be
    kept with an upload that goes on across requests and settled by any instance."""

    token: str
    reserved: int
    ticket_id: str | None = None


def _quota_key(token: str) -> str:
    return f"quota:bytes:{token}"


def _ticket_key(ticket_id: str) -> str:
    return f"ticket:{ticket_id}"


def _count_ttl(ticket: Ticket) -> int:
    return max(int(ticket.expires_at - time.time()), 1) + TICKET_COUNT_GRACE_SECONDS


def _seconds_until(reset_time: float) -> int:
    return max(math.ceil(reset_time - time.time()), 1)
