"""The deadline and the retry policy: exponential backoff with jitter, bounded by
attempts AND a deadline.

One ``Deadline`` object is passed explicitly down every blocking call (the way Go code
passes a context): an upload makes one and hands it to every API call, region POST and
wait; an API call on its own makes one from the policy. Which failures are retryable is
the catalogue's decision (``errors.is_retryable``); this module only decides *when* to
try again and when to give up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from app import metrics

from .errors import MegaDeadlineExceeded, MegaRetriesExhausted, failure_name, is_retryable

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: ``attempts`` per call, waits from ``initial_s`` up to ``max_s``, and
    ``deadline_s``, the longest one API call may retry when its caller gives no deadline.
    The production values come from the settings (``MegaSettings.retry_policy``)."""

    attempts: int
    deadline_s: float
    initial_s: float
    max_s: float

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


def _log_before_sleep(what: str, attempts: int) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        metrics.mega_retry(failure_name(exc) if exc else "?")
        # Only the failure's table name: exception texts may carry URLs with the session id.
        logger.warning(
            "%s failed with %s (attempt %d/%d); retrying in %.2f s",
            what,
            failure_name(exc) if exc else "?",
            state.attempt_number,
            attempts,
            delay,
        )

    return log


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    deadline: Deadline,
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    what: str = "MEGA request",
) -> T:
    """Run ``fn`` until it returns, raises a non-retryable exception (re-raised as is),
    or the policy runs out: ``MegaRetriesExhausted`` after ``policy.attempts`` attempts,
    ``MegaDeadlineExceeded`` when the next wait would pass ``deadline``.
    Both carry the last failure (``.last``) and chain it as ``__cause__``.
    """

    def past_deadline(state: RetryCallState) -> bool:
        # Never start a wait that would end past the deadline.
        return (state.upcoming_sleep or 0.0) >= deadline.remaining()

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts) | past_deadline,
        wait=wait_random_exponential(multiplier=policy.initial_s, max=policy.max_s),
        retry=retry_if_exception(retryable),
        before_sleep=_log_before_sleep(what, policy.attempts),
        reraise=False,
    )
    try:
        return retrying(fn)
    except RetryError as stopped:
        attempt = stopped.last_attempt
        last = attempt.exception()
        assert last is not None  # only failures are retried
        if attempt.attempt_number >= policy.attempts:
            raise MegaRetriesExhausted(attempt.attempt_number, last) from last
        raise MegaDeadlineExceeded(attempt.attempt_number, deadline.seconds, last) from last
