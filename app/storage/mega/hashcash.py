"""MEGA's proof of work ("hashcash"), asked for with HTTP 402 and an ``X-Hashcash`` header.

Challenge: ``X-Hashcash: 1:<easiness>:<ignored>:<token, base64url>``. The client fills a
buffer of 4 + 262144 x 48 bytes: a 4-byte counter, then 262144 slots of 48 bytes that
each start with the token; it counts until the first 4 bytes of sha256(buffer), read as
a big-endian number, are at most ``threshold(easiness)``, and resends the request with
``X-Hashcash: 1:<token>:<base64url of the 4 counter bytes>``.

Each try hashes 12 MiB, so the search runs on a few threads: hashlib releases the GIL
while hashing large buffers, and each thread owns a preallocated buffer and only
rewrites its first 4 bytes per try. It runs in the caller's worker thread, never on the
event loop, and stops at a deadline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import time
from dataclasses import dataclass

from .errors import HashcashUnsolved

SLOT = 48
SLOTS = 262144
VERSION = "1"


@dataclass(frozen=True, slots=True)
class Challenge:
    easiness: int
    token: str  # as MEGA sent it (base64url); echoed back in the answer
    token_bytes: bytes


def threshold(easiness: int) -> int:
    """The largest accepted 32-bit hash prefix for an easiness value (0..255)."""
    return (((easiness & 63) << 1) + 1) << ((easiness >> 6) * 7 + 3)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def parse_challenge(header: str) -> Challenge:
    """Parse the 402's ``X-Hashcash`` header; HashcashUnsolved when it is not version 1."""
    parts = header.strip().split(":")
    if len(parts) != 4 or parts[0] != VERSION:
        raise HashcashUnsolved("unsupported challenge")
    try:
        easiness = int(parts[1])
        token_bytes = _b64url_decode(parts[3])
    except (ValueError, binascii.Error):
        raise HashcashUnsolved("malformed challenge") from None
    if not 0 <= easiness <= 255 or not token_bytes or len(token_bytes) > SLOT:
        raise HashcashUnsolved("malformed challenge")
    return Challenge(easiness, parts[3], token_bytes)


def answer_header(challenge: Challenge, prefix: bytes) -> str:
    return f"{VERSION}:{challenge.token}:{_b64url_encode(prefix)}"


def _buffer(token: bytes) -> bytearray:
    slot = token + b"\0" * (-len(token) % 16)
    slot += b"\0" * (SLOT - len(slot))
    return bytearray(4) + bytearray(slot * SLOTS)


def solve_prefix(
    token: bytes, easiness: int, deadline_s: float, threads: int | None = None
) -> bytes:
    """The 4 counter bytes that satisfy the challenge; HashcashUnsolved after ``deadline_s``."""
    limit = threshold(easiness)
    workers = threads or max(1, min(4, os.cpu_count() or 1))
    stop_at = time.monotonic() + deadline_s
    found: list[bytes] = []
    done = threading.Event()

    def search(start: int) -> None:
        buffer = _buffer(token)
        view = memoryview(buffer)
        counter = start
        while not done.is_set() and counter <= 0xFFFFFFFF:
            view[:4] = counter.to_bytes(4, "little")
            if int.from_bytes(hashlib.sha256(view).digest()[:4], "big") <= limit:
                found.append(bytes(view[:4]))
                done.set()
                return
            if time.monotonic() >= stop_at:
                return
            counter += workers

    pool = [
        threading.Thread(target=search, args=(first,), name=f"mega-hashcash-{first}", daemon=True)
        for first in range(1, workers + 1)
    ]
    for thread in pool:
        thread.start()
    try:
        for thread in pool:
            # Each try is ~10-30 ms, so threads notice the deadline almost at once.
            thread.join(timeout=max(0.0, stop_at - time.monotonic()) + 5)
    finally:
        done.set()
    if not found:
        raise HashcashUnsolved("deadline")
    return found[0]


def solve(header: str, deadline_s: float, threads: int | None = None) -> str:
    """The ``X-Hashcash`` answer header for a challenge header."""
    challenge = parse_challenge(header)
    prefix = solve_prefix(challenge.token_bytes, challenge.easiness, deadline_s, threads)
    return answer_header(challenge, prefix)
