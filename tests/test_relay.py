"""The body relay between the receiving thread and storage: bounded, ordered, replayable."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.intake.errors import SourceGone
from app.intake.relay import BodyRelay, PredictionMissed

WAIT_S = 10


def feed(relay: BodyRelay, copy: Path | None, pieces: list[bytes]) -> threading.Thread:
    """The receiving side: each piece to the copy first (as Intake does), then the relay."""

    def run() -> None:
        with copy.open("ab", buffering=0) if copy else open("/dev/null", "ab") as out:
            for piece in pieces:
                out.write(piece)
                relay.put(piece)
        relay.finish()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_all(relay: BodyRelay, size: int = 7) -> bytes:
    out = bytearray()
    while block := relay.read(size):
        out += block
    return bytes(out)


def test_a_rewind_replays_what_was_read_from_the_copy_then_goes_on_live(tmp_path: Path) -> None:
    pieces = [bytes([i]) * 1000 for i in range(1, 9)]
    body = b"".join(pieces)
    copy = tmp_path / "copy"
    copy.touch()
    relay = BodyRelay(len(body), copy, queue_blocks=2)
    thread = feed(relay, copy, pieces)
    first = relay.read(2500)  # part of the first block; more is still queued or unsent
    assert first == body[: len(first)]
    assert relay.rewind()
    # From byte 0 again: the replayed part from the copy, then the rest live, in order.
    assert read_all(relay) == body
    thread.join(WAIT_S)
    relay.stop()


def test_a_second_rewind_starts_from_zero_again(tmp_path: Path) -> None:
    pieces = [b"a" * 300, b"b" * 300, b"c" * 300]
    body = b"".join(pieces)
    copy = tmp_path / "copy"
    copy.touch()
    relay = BodyRelay(len(body), copy)
    thread = feed(relay, copy, pieces)
    relay.read(300)
    relay.read(300)
    assert relay.rewind()
    assert relay.read(450) == body[:450]
    assert relay.rewind()
    assert read_all(relay, 1000) == body
    thread.join(WAIT_S)
    relay.stop()


def test_without_a_copy_there_is_no_rewind() -> None:
    relay = BodyRelay(10)
    assert relay.rewind() is False


def test_the_last_piece_waits_for_the_body_to_be_known_complete() -> None:
    """A backend never completes a file from a body that later turns out wrong."""
    relay = BodyRelay(6, queue_blocks=4)
    relay.put(b"abc")
    relay.put(b"def")  # reaches the announced size: held back
    assert relay.read(10) == b"abc"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(relay.read(10)), daemon=True)
    reader.start()
    reader.join(0.5)
    assert reader.is_alive() and not got  # waiting for finish()
    relay.finish()
    reader.join(WAIT_S)
    assert got == [b"def"] and relay.read(10) == b""


def test_more_bytes_than_announced_fail_the_reader() -> None:
    relay = BodyRelay(4)
    relay.put(b"abcdef")
    with pytest.raises(PredictionMissed):
        relay.read(10)


def test_a_client_that_leaves_fails_the_reader_with_its_reason() -> None:
    relay = BodyRelay(100)
    relay.put(b"x" * 10)
    relay.fail(SourceGone("the client left"))
    with pytest.raises(SourceGone, match="the client left"):
        relay.read(5)
