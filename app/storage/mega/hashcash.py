"""MEGA's proof of work ("hashcash"), asked for with HTTP 402 and an ``X-Hashcash`` header.

Challenge: ``X-Hashcash: 1:<easiness>:<ignored>:<token, base64url>``. The client fills a
buffer of 4 + 262144 x 48 bytes: a 4-byte counter, then 262144 slots of 48 bytes that
each start with the token; it counts until the first 4 bytes of sha256(buffer), read as
a big-endian number, are at most ``threshold(easiness)``, and resends the request with
``X-Hashcash: 1:<token>:<base64url of the 4 counter bytes>``.

Each try hashes 12 MiB, so the search runs on as many threads as the process may really
use (the cgroup CPU quota, not the host's core count; at most 8, as the SDK's
``MAX_WORKERS_FOR_GENCASH``): hashlib releases the GIL while hashing large buffers, and
each thread owns a preallocated buffer and only rewrites its first 4 bytes per try. It
runs in the log-in's worker thread, never on the event loop.

Timing follows the SDK's ``src/hashcash.cpp``: a challenge lives about 5 minutes
(``kTtl``), a solver gets a third of that (100 s) and, when it runs out, the request is
sent again with an empty answer (``src/posix/net.cpp`` sends ``1:<token>:``), which
makes MEGA hand out a fresh challenge. The whole log-in has its own, longer deadline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import HashcashUnsolved

SLOT = 48
SLOTS = 262144
VERSION = "1"
# src/hashcash.cpp: kTtl 300 s, budget = clamp(kTtl / 3, 30 s, 90 % of kTtl).
CHALLENGE_BUDGET_S = 100.0
MAX_THREADS = 8  # include/mega/hashcash.h: MAX_WORKERS_FOR_GENCASH


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs the cgroup quota allows (0.5 for half a CPU), or None when unlimited.

    Render, Docker (``--cpus``) and Kubernetes limit CPU with a quota, not with fewer
    cores: ``os.cpu_count()`` still shows the host's, and threads beyond the quota only
    take turns.
    """
    try:  # cgroup v2: "max 100000" or "50000 100000"
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """Threads worth running: the CPUs this process may use, 1 to MAX_THREADS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, min(MAX_THREADS, cores))


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


def describe(header: str, threads: int | None = None) -> str:
    """A challenge's size for the log: its easiness, the tries it takes on average, and
    the threads that will work on it (so operators can tell minutes from seconds)."""
    try:
        easiness = parse_challenge(header).easiness
    except HashcashUnsolved:
        return "a malformed challenge"
    tries = 2**32 / (threshold(easiness) + 1)
    workers = threads or usable_cpus()
    return f"easiness {easiness}: about {tries:,.0f} tries of 12 MiB on {workers} threads"


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
    workers = threads or usable_cpus()
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
    """The ``X-Hashcash`` answer header for a challenge header. When ``deadline_s`` runs
    out first, the answer is empty (``1:<token>:``), which asks MEGA for a fresh challenge
    as the SDK does; a malformed challenge raises HashcashUnsolved."""
    challenge = parse_challenge(header)
    try:
        prefix = solve_prefix(challenge.token_bytes, challenge.easiness, deadline_s, threads)
    except HashcashUnsolved:
        return f"{VERSION}:{challenge.token}:"
    return answer_header(challenge, prefix)
