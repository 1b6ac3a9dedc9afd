"""Encodings MEGA uses on the wire: unpadded base64url, 32-bit word arrays, MPIs."""

from __future__ import annotations

import base64
import random


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    # MEGA strips the padding; some clients also send ',' separators.
    text = text.replace(",", "")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mpi_encode(value: int) -> bytes:
    """Two-byte big-endian bit length, then the magnitude big-endian."""
    bits = value.bit_length()
    return bits.to_bytes(2, "big") + value.to_bytes((bits + 7) // 8, "big")


def random_handle(rng: random.Random, n_bytes: int, avoid_dash: bool = False) -> str:
    """A base64url handle of n_bytes random bytes (6 bytes -> 8 characters)."""
    while True:
        handle = b64url_encode(rng.randbytes(n_bytes))
        if not (avoid_dash and "-" in handle):
            return handle
