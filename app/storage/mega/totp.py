"""RFC 6238 time-based one-time codes, as MEGA's two-factor authentication uses them.

MEGA shows a base32 secret when 2FA is turned on and expects the 6-digit code of the
current 30-second step (HMAC-SHA1), the default of every authenticator app; the SDK sends
it as ``mfa`` in the log-in command (``src/commands.cpp``, ``CommandLogin``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

STEP_S = 30
DIGITS = 6


def totp(secret: str, at: float | None = None) -> str:
    """The code for base32 ``secret`` at Unix time ``at`` (now by default)."""
    text = secret.replace(" ", "").upper().rstrip("=")
    key = base64.b32decode(text + "=" * (-len(text) % 8))
    counter = int((time.time() if at is None else at) // STEP_S)
    mac = hmac.new(key, counter.to_bytes(8, "big"), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)
