"""Digests a client declares for the file it sends, read from RFC 9530 fields.

``PUT`` carries the file as its body, so its ``Repr-Digest`` is the file's digest. A
multipart ``POST`` body is not the file: the same value goes in the service's own
``Paimon-File-Digest`` field, with the same syntax. Both are Structured Field dictionaries
(RFC 8941) of algorithm = byte sequence, e.g.
``sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:``; only ``sha-256`` is used, other
algorithms are ignored, as RFC 9530 lets a recipient do.
"""

from __future__ import annotations

import base64
import binascii
import re

from app.intake.errors import BadDigest

PUT_HEADER = "Repr-Digest"
POST_HEADER = "Paimon-File-Digest"
_MEMBER = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)\s*=\s*:([A-Za-z0-9+/=]*):\s*(?:;[^,]*)?")


def declared_sha256(value: str | None, header: str) -> str | None:
    """The SHA-256 (hex) a digest field declares; None when it declares none; ``BadDigest``
    naming the field when it cannot be read."""
    if value is None or not value.strip():
        return None
    found: str | None = None
    for member in value.split(","):
        match = _MEMBER.fullmatch(member)
        if match is None:
            raise BadDigest(f"{header} is not a digest field such as sha-256=:<base64>:")
        if match.group(1) != "sha-256":
            continue
        try:
            digest = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            raise BadDigest(f"{header}: sha-256 is not 32 bytes of base64")
        found = digest.hex()
    return found
