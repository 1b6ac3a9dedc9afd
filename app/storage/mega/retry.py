"""The deadline and the retry policy: when to try again, how long to wait, when to give
up, bounded by attempts AND a deadline.

One ``Deadline`` object is passed explicitly down every blocking call (the way Go code
passes a context): an upload makes one and hands it to every API call, region POST and
wait; an API call on its own makes one from the policy. Which failures are retryable is
the catalogue's decision (``errors.is_retryable``), and so is each failure's pace
(``errors.Pace``); this module turns the pace into waits, as MEGA's own clients wait:

* ``BACKOFF``: the SDK's ``BackoffTimer`` (``src/backofftimer.cpp``): the first wait is
  ``initial_s``, each later one doubles the base and adds up to half of it at random,
  capped at ``max_s``. These tries count against ``attempts``.
* ``RATE_LIMIT``: the web client's waits after -4 (``MEGAPIRequest.errorHandler`` in
  ``js/utils/api.js``): 0.9 s plus an exponentially distributed 4 s on average, doubled
  before every wait, at most 300 s. MEGA's clients wait a rate limit out; so does this,
  until the deadline, without counting the tries.
* ``UPLOAD_SLOW_DOWN`` / ``UPLOAD_BUSY``: the upload server's 429 and 503, a fixed 0.5 s
  and 5 s before the same piece again (``TransferSlot::processRequestFailure`` in
  ``src/transferslot.cpp``), not counted either.

Whatever the pace, no wait starts that would end past the deadline.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from app import metrics

from .errors import (
    MegaDeadlineExceeded,
    MegaRetriesExhausted,
    Pace,
    failure_name,
    failure_of,
    is_retryable,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Waits:
    """The waits MEGA's clients use where MEGA itself says how busy it is (see above)."""

    rate_limit_floor_s: float = 0.9
    rate_limit_mean_s: float = 4.0
    rate_limit_max_s: float = 300.0
    upload_slow_down_s: float = 0.5
    upload_busy_s: float = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: ``attempts`` per call (counting the tries that back off), waits from
    ``initial_s`` up to ``max_s``, and ``deadline_s``, the longest one API call may retry
    when its caller gives no deadline. The production values come from the settings
    (``app.storage.mega.settings.retry_policy``); ``waits`` are MEGA's clients'."""

    attempts: int
    deadline_s: float
    initial_s: float
    max_s: float
    waits: Waits = field(default_factory=Waits)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.deadline_s <= 0 or self.initial_s < 0 or self.max_s < 0:
            raise ValueError("retry policy needs attempts >= 1, a positive deadline, waits >= 0")


class Deadline:
    """A point in monotonic time, and the length it was given (for the error message).

    It bounds MEGA's work only: time spent waiting for the client's bytes is handed back
    with ``exclude``, so a slow but steady client is never blamed on MEGA (the client's own
    limits are the idle timeout and the minimum rate).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        # The reading thread moves ``at`` while the region threads read it.
        self._lock = threading.Lock()

    def exclude(self, seconds: float) -> None:
        """Do not count ``seconds`` just spent waiting on someone other than MEGA."""
        if seconds > 0:
            with self._lock:
                self.at += seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def check(self, last: BaseException | None = None) -> None:
        """Raise ``MegaDeadlineExceeded`` once the deadline has passed."""
        if self.at <= time.monotonic():
            raise MegaDeadlineExceeded(0, self.seconds, last)

    def sooner(self, seconds: float) -> Deadline:
        """This deadline, or one ``seconds`` from now when that comes first."""
        other = Deadline(seconds)
        return other if other.at < self.at else self

    def timeouts(self, connect_s: float, read_s: float) -> tuple[float, float]:
        """Per-request (connect, read) timeouts, both cut to what is left."""
        left = max(0.05, self.remaining())
        return min(connect_s, left), min(read_s, left)


class _Schedule:
    """The waits of one call: each pace keeps its own state, as the SDK's timer and the
    web client's backoff do for one request."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoffs = 0
        self.rate_limit_s: float | None = None

    def counts(self, pace: Pace) -> bool:
        return pace is Pace.BACKOFF

    def next_wait(self, pace: Pace) -> float:
        waits = self.policy.waits
        if pace is Pace.UPLOAD_SLOW_DOWN:
            return waits.upload_slow_down_s
        if pace is Pace.UPLOAD_BUSY:
            return waits.upload_busy_s
        if pace is Pace.RATE_LIMIT:
            if self.rate_limit_s is None:
                mean = waits.rate_limit_mean_s
                jitter = random.expovariate(1 / mean) if mean > 0 else 0.0
                self.rate_limit_s = waits.rate_limit_floor_s + jitter
            self.rate_limit_s = min(waits.rate_limit_max_s, 2 * self.rate_limit_s)
            return self.rate_limit_s
        self.backoffs += 1
        if self.backoffs == 1:
            return min(self.policy.initial_s, self.policy.max_s)
        base = min(self.policy.max_s, self.policy.initial_s * 2 ** (self.backoffs - 1))
        return min(self.policy.max_s, base + base / 2 * random.random())


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    deadline: Deadline,
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    what: str = "MEGA request",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn`` until it returns, raises a non-retryable exception (re-raised as is),
    or the policy runs out: ``MegaRetriesExhausted`` after ``policy.attempts`` counted
    tries, ``MegaDeadlineExceeded`` when the next wait would pass ``deadline``.
    Both carry the last failure (``.last``) and chain it as ``__cause__``. ``sleep`` waits
    between tries (an upload's waits end early when the upload is torn down).
    """
    schedule = _Schedule(policy)
    tries = counted = 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            pace = failure_of(exc).pace
            counted += schedule.counts(pace)
            if counted >= policy.attempts:
                raise MegaRetriesExhausted(tries, exc) from exc
            delay = schedule.next_wait(pace)
            if delay >= deadline.remaining():  # never start a wait that would end past it
                raise MegaDeadlineExceeded(tries, deadline.seconds, exc) from exc
            metrics.mega_retry(failure_name(exc))
            # Only the failure's table name: exception texts may carry URLs with the sid.
            logger.warning(
                "%s failed with %s (try %d, %d/%d counted); retrying in %.2f s",
                what,
                failure_name(exc),
                tries,
                counted,
                policy.attempts,
                delay,
            )
        sleep(delay)
