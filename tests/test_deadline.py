"""The MEGA deadline bounds MEGA's work only: time spent waiting on the client is handed back."""

from __future__ import annotations

import time

import pytest

from app.storage.mega.errors import MegaDeadlineExceeded
from app.storage.mega.retry import Deadline


def test_excluded_time_moves_the_deadline_by_exactly_that_much() -> None:
    deadline = Deadline(10)
    before = deadline.at
    deadline.exclude(2.5)
    deadline.exclude(0)
    deadline.exclude(-3)  # a clock that went backwards hands nothing back
    assert deadline.at == pytest.approx(before + 2.5)


def test_a_deadline_that_waited_on_the_client_has_not_passed() -> None:
    deadline = Deadline(0.2)
    started = time.monotonic()
    time.sleep(0.3)  # "waiting for the client's next bytes"
    deadline.exclude(time.monotonic() - started)
    deadline.check()  # not passed: the wait was the client's
    assert deadline.remaining() > 0.1


def test_without_exclusion_it_passes() -> None:
    deadline = Deadline(0.05)
    time.sleep(0.1)
    with pytest.raises(MegaDeadlineExceeded):
        deadline.check()


def test_sooner_never_extends() -> None:
    deadline = Deadline(5)
    assert deadline.sooner(60) is deadline
    assert deadline.sooner(1).remaining() <= 1
