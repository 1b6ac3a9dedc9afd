"""MEGA's log-in hashcash: challenge format and the solver-independent check.

The server answers HTTP 402 with ``X-Hashcash: 1:<easiness>:<timestamp>:<token>``;
the client retries with ``X-Hashcash: 1:<token>:<base64url of 4 prefix bytes>``.
"""

from __future__ import annotations

import hashlib
import os
import time

from .codec import b64url_decode, b64url_encode

TOKEN_BYTES = 48
REPEATS = 262144


def threshold(easiness: int) -> int:
    return (((easiness & 63) << 1) + 1) << ((easiness >> 6) * 7 + 3)


def padded_token(token: bytes) -> bytes:
    return token + b"\0" * (-len(token) % 16)


def verify(token: str, prefix: str | bytes, easiness: int) -> bool:
    """True when sha256(prefix + token * 262144) starts with a 32-bit number
    no larger than the easiness threshold."""
    try:
        raw_token = b64url_decode(token)
        raw_prefix = b64url_decode(prefix) if isinstance(prefix, str) else prefix
    except (ValueError, TypeError):
        return False
    if len(raw_prefix) != 4 or not raw_token:
        return False
    digest = hashlib.sha256(raw_prefix + padded_token(raw_token) * REPEATS).digest()
    return int.from_bytes(digest[:4], "big") <= threshold(easiness)


def new_challenge(easiness: int) -> tuple[str, str]:
    """(token, X-Hashcash header value) of a fresh challenge."""
    token = b64url_encode(os.urandom(TOKEN_BYTES))
    return token, f"1:{easiness}:{int(time.time())}:{token}"


def parse_answer(header: str | None) -> tuple[str, str] | None:
    """(token, prefix) of a client's answer header, or None when malformed."""
    if not header:
        return None
    parts = header.strip().split(":")
    if len(parts) != 3 or parts[0] != "1":
        return None
    return parts[1], parts[2]
