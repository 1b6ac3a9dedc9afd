"""The brake on guessing tokens: too many wrong tokens from one address are refused.

Failures are counted per client address (IPv6 per /64) in a moving one-minute window by
the ``limits`` library. Once an address has sent AUTH_FAILURES_PER_MINUTE wrong tokens,
its token checks are refused with 429 and ``Retry-After`` until the oldest failure leaves
the window, without comparing the token: answering a right token from that address
would keep telling the guesser when it has found one. Other addresses are never
affected, so a client presenting the right token from its own address always gets in.

The counts live in the shared store: in Redis when ``REDIS_URL`` is set, so that the
number of failures per minute holds across workers and instances, else in this process.
While a configured Redis is out of reach the brake counts per process (it fails open to
that, never to an error): a guesser gains at most one minute's failures per process.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.strategies import MovingWindowRateLimiter

from app.access.addresses import client_key
from app.access.errors import TooManyFailures
from app.shared_state import SharedCounters, SharedState

NAMESPACE = "auth-failures"


class AuthBrake:
    """Counts wrong tokens per client address and stops an address that sent too many."""

    def __init__(self, failures_per_minute: int, state: SharedState) -> None:
        self.limit = RateLimitItemPerMinute(failures_per_minute)
        self._count = SharedCounters(state, MovingWindowRateLimiter).count

    def check(self, address: str) -> None:
        """Raise ``TooManyFailures`` when ``address`` may not try a token now."""
        key = client_key(address)
        if self._count(lambda limiter: limiter.test(self.limit, NAMESPACE, key)):
            return
        stats = self._count(lambda limiter: limiter.get_window_stats(self.limit, NAMESPACE, key))
        reset = stats.reset_time
        wait_s = max(1, math.ceil(reset - time.time()))
        raise TooManyFailures(
            f"too many wrong tokens from this address; try again in {wait_s} s", wait_s
        )

    def failed(self, address: str) -> None:
        """Count one wrong token from ``address``."""
        key = client_key(address)
        self._count(lambda limiter: limiter.hit(self.limit, NAMESPACE, key))
