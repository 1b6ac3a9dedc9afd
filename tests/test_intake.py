"""Taking a body in: pace, blocks, the file limit, the quota meter, multipart framing."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import anyio
import pytest

from app.intake.body import Intake, Pace, pump
from app.intake.errors import (
    BadMultipart,
    ClientTooSlow,
    FormTooLarge,
    MissingFile,
    NotMultipart,
    TooManyFiles,
    UploadTooLarge,
)
from app.intake.multipart import MULTIPART_OVERHEAD, MultipartIntake, multipart_boundary

RELAXED = Pace(idle_s=5, min_bytes_per_second=0)


async def chunks(*pieces: bytes, pause_s: float = 0) -> AsyncIterator[bytes]:
    for piece in pieces:
        if pause_s:
            await anyio.sleep(pause_s)
        yield piece


def run(intake: Intake, *pieces: bytes, pace: Pace = RELAXED, pause_s: float = 0) -> None:
    anyio.run(lambda: pump(chunks(*pieces, pause_s=pause_s), intake, pace))


class Meter:
    """Counts what an upload asked of its quota, refusing past ``room``."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.asked: list[int] = []

    def need(self, total: int) -> None:
        self.asked.append(total)
        if total > self.room:
            raise UploadTooLarge(self.room, "the quota")


def form(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_a_raw_body_is_hashed_counted_and_metered() -> None:
    meter = Meter(room=10_000)
    intake = Intake(limit=10_000, copy=None, relay=None, meter=meter)
    run(intake, b"a" * 3000, b"b" * 4000)
    assert intake.size == 7000
    assert intake.sha256() == hashlib.sha256(b"a" * 3000 + b"b" * 4000).hexdigest()
    assert meter.asked[-1] == 7000


def test_the_file_limit_and_the_meter_stop_a_body_as_it_arrives() -> None:
    with pytest.raises(UploadTooLarge, match="limit of 100 bytes"):
        run(Intake(limit=100, copy=None, relay=None), b"x" * 60, b"x" * 60)
    with pytest.raises(UploadTooLarge, match="the quota of 50 bytes"):
        run(Intake(limit=100, copy=None, relay=None, meter=Meter(room=50)), b"x" * 60)


def test_a_silent_client_is_too_slow() -> None:
    with pytest.raises(ClientTooSlow, match=r"sent nothing for 0\.2 s"):
        run(Intake(1000, None, None), b"a", b"b", pace=Pace(0.2, 0), pause_s=0.5)


def test_a_trickle_under_the_minimum_rate_is_too_slow() -> None:
    pieces = [b"t"] * 20  # 1 byte every 0.1 s: 10 bytes/s against a minimum of 100
    with pytest.raises(ClientTooSlow, match="slower than 100 bytes/s"):
        run(Intake(1000, None, None), *pieces, pace=Pace(0.3, 100), pause_s=0.1)


def test_the_file_part_is_capped_whatever_the_framing() -> None:
    boundary = "b"
    body = form(boundary, ("note", None, b"hello"), ("file", "a.bin", b"f" * 1001))
    intake = MultipartIntake(1000, None, boundary.encode(), len(body), stream=False)
    with pytest.raises(UploadTooLarge):
        run(intake, body)
    fits = form(boundary, ("file", "a.bin", b"f" * 1000))
    intake = MultipartIntake(1000, None, boundary.encode(), len(fits), stream=False)
    run(intake, fits)
    assert intake.size == 1000 and intake.filename == "a.bin"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (form("b", ("other", "a.bin", b"x")), MissingFile),
        (form("b", ("file", "a", b"x"), ("file", "b", b"y")), TooManyFiles),
        (b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno end", BadMultipart),
        (form("b", ("note", None, b"n" * (MULTIPART_OVERHEAD + 1)), ("file", "a", b"x")),
         FormTooLarge),
    ],
    ids=["other-field", "two-files", "unfinished", "fields-too-large"],
)  # fmt: skip
def test_malformed_forms_say_what_is_wrong(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        run(MultipartIntake(10**6, None, b"b", len(body), stream=False), body)


def test_only_multipart_form_data_has_a_boundary() -> None:
    assert multipart_boundary("multipart/form-data; boundary=xyz") == b"xyz"
    with pytest.raises(NotMultipart):
        multipart_boundary("application/json")
    with pytest.raises(BadMultipart):
        multipart_boundary("multipart/form-data")
