"""The retry policy: exponential backoff with jitter, bounded by attempts AND a deadline.

Used by the API client for every request and by the upload path for chunks. Which
failures are retryable is the error table's decision (``errors.is_retryable``); this
module only decides *when* to try again and when to give up.
"""

from __future__ import annotations

import logging
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
    stop_before_delay,
    wait_random_exponential,
)

from .errors import MegaDeadlineExceeded, MegaRetriesExhausted, failure_name, is_retryable

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try. Production defaults; tests pass small numbers."""

    attempts: int = 8
    deadline_s: float = 120.0
    initial_s: float = 0.5
    max_s: float = 15.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.deadline_s <= 0 or self.initial_s < 0 or self.max_s < 0:
            raise ValueError("retry policy needs attempts >= 1, a positive deadline, waits >= 0")


class Deadline:
    """A point in monotonic time; gives the remaining seconds for per-request timeouts."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())


def _log_before_sleep(what: str, attempts: int) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
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
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    what: str = "MEGA request",
) -> T:
    """Run ``fn`` until it returns, raises a non-retryable exception (re-raised as is),
    or the policy runs out: ``MegaRetriesExhausted`` after ``policy.attempts`` attempts,
    ``MegaDeadlineExceeded`` when the next wait would pass ``policy.deadline_s``.
    Both carry the last failure (``.last``) and chain it as ``__cause__``.
    """
    retrying = Retrying(
        # stop_before_delay: never start a wait that would end past the deadline.
        stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.deadline_s),
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
        raise MegaDeadlineExceeded(attempt.attempt_number, policy.deadline_s, last) from last
