"""Rate limits and quotas per token, counted by the ``limits`` library in the shared store.

``uploads_per_minute`` is a moving window (no burst of twice the limit at a minute's
edge); ``bytes_per_day`` a fixed window of 24 hours that starts with the first upload
counted in it. An upload is refused when its declared size would pass what is left of
the day, and counted with its real size once it is stored.

A ticket's uses are counted here too, so that ``max_uses`` holds across instances.

Without Redis (not configured, or unreachable) the counting happens per process. When
Redis is configured but unreachable, limits fail open to that per-process counting (the
service keeps serving, each worker still enforces the limits on its own) while tickets
fail closed: a ticket's use count cannot be checked, so the ticket is refused with 503.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerDay, RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from app.shared_state import SharedCounters, SharedState, SharedStateUnavailable
from app.tickets import Ticket
from app.tokens import TokenPolicy

# Use counts outlive the ticket's expiry a little, so a clock step between instances
# cannot bring a used-up ticket back.
TICKET_COUNT_GRACE_SECONDS = 300


@dataclass
class LimitExceeded(Exception):
    """An upload the limits refuse: HTTP status, code, message and Retry-After seconds."""

    status: int
    code: str
    message: str
    retry_after: int | None = None
    limit: str = ""


class _Counters:
    def __init__(self, storage: Storage) -> None:
        self.per_minute = MovingWindowRateLimiter(storage)
        self.per_day = FixedWindowRateLimiter(storage)


class UploadLimits:
    """Admission of uploads by the limits of the token (or a ticket's issuer)."""

    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._count = SharedCounters(state, _Counters).count

    def admit(
        self, policy: TokenPolicy, declared_bytes: int | None, ticket: Ticket | None = None
    ) -> None:
        """Count one upload against ``policy``; LimitExceeded if a limit refuses it."""
        name = policy.name
        if policy.bytes_per_day is not None:
            day = RateLimitItemPerDay(policy.bytes_per_day)
            cost = max(declared_bytes or 1, 1)
            if not self._count(lambda c: c.per_day.test(day, "bytes", name, cost=cost)):
                stats = self._count(lambda c: c.per_day.get_window_stats(day, "bytes", name))
                raise LimitExceeded(
                    429,
                    "quota_exceeded",
                    f"daily quota: token {name!r} may upload {policy.bytes_per_day} bytes per "
                    f"day; {stats.remaining} bytes are left",
                    _seconds_until(stats.reset_time),
                    "bytes_per_day",
                )
        if policy.uploads_per_minute is not None:
            minute = RateLimitItemPerMinute(policy.uploads_per_minute)
            if not self._count(lambda c: c.per_minute.hit(minute, "uploads", name)):
                stats = self._count(
                    lambda c: c.per_minute.get_window_stats(minute, "uploads", name)
                )
                raise LimitExceeded(
                    429,
                    "rate_limited",
                    f"rate limit: token {name!r} may start {policy.uploads_per_minute} uploads "
                    "per minute",
                    _seconds_until(stats.reset_time),
                    "uploads_per_minute",
                )
        if ticket is not None:
            self._use_ticket(ticket)

    def _use_ticket(self, ticket: Ticket) -> None:
        try:
            uses = self._state.incr(f"ticket:{ticket.id}", _count_ttl(ticket))
        except SharedStateUnavailable:
            raise LimitExceeded(
                503,
                "tickets_unavailable",
                "tickets cannot be checked right now (shared state unreachable); try again later",
                30,
            ) from None
        if uses > ticket.max_uses:
            raise LimitExceeded(
                429,
                "ticket_used_up",
                f"the ticket has been used up: it allows {ticket.max_uses} upload(s)",
                None,
                "ticket_max_uses",
            )

    def settle(self, policy: TokenPolicy, ticket: Ticket | None, stored: bool, size: int) -> None:
        """After an admitted upload: count stored bytes against the day's quota, or give a
        ticket its use back when nothing was stored (a failed upload may be retried)."""
        if stored and policy.bytes_per_day and size > 0:
            day = RateLimitItemPerDay(policy.bytes_per_day)
            self._count(lambda c: c.per_day.hit(day, "bytes", policy.name, cost=size))
        elif not stored and ticket is not None:
            with contextlib.suppress(SharedStateUnavailable):
                self._state.incr(f"ticket:{ticket.id}", _count_ttl(ticket), -1)


def _count_ttl(ticket: Ticket) -> int:
    return max(int(ticket.expires_at - time.time()), 1) + TICKET_COUNT_GRACE_SECONDS


def _seconds_until(reset_time: float) -> int:
    return max(math.ceil(reset_time - time.time()), 1)
