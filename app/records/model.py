"""What the service knows about a stored file, and how that is written onto the file.

A file's record is four short string fields kept by the storage backend with the file
itself (on MEGA: custom node attributes, ``_`` plus at most 7 bytes, string values only,
the SDK's convention; locally: a JSON file beside it):

============  =============================================================
``_pv``       the record's format, ``1``
``_psha``     SHA-256 of the file's bytes, hex
``_pct``      when the file was first stored, Unix seconds
``_prefs``    its references, space-separated
============  =============================================================

A *reference* is one upload of the file: the token name that sent it, when, until when
it is wanted (empty: kept), and the hash of that upload's delete secret, written as
``<token>:<created>:<expires>:<secret hash>``. Uploads of the same bytes share one file
and add references to it; the file lives while one of its references does.

Token names never contain ``:`` or spaces, and every field is plain ASCII, so the SDK
reads each value exactly as written (it keeps only the low byte of a ``\\uXXXX`` escape).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.storage.base import RECORD_PREFIX, FileFacts, FileRecord

FORMAT = "1"
VERSION_FIELD = RECORD_PREFIX + "v"
SHA256_FIELD = RECORD_PREFIX + "sha"
CREATED_FIELD = RECORD_PREFIX + "ct"
REFERENCES_FIELD = RECORD_PREFIX + "refs"
FIELDS = (VERSION_FIELD, SHA256_FIELD, CREATED_FIELD, REFERENCES_FIELD)
# At most this many references per file keep its record well inside the 64 KiB the SDK
# allows an attribute block (MAX_NODE_ATTRIBUTE_SIZE, include/mega/types.h); an upload of
# the same bytes beyond it is stored as a file of its own.
MAX_REFERENCES = 400
SECRET_HASH_CHARS = 16

assert all(len(name.encode()) <= 8 for name in FIELDS)


def new_secret() -> tuple[str, str]:
    """A fresh delete secret (192 random bits) and the hash kept in its reference."""
    secret = secrets.token_urlsafe(24)
    return secret, secret_hash(secret)


def secret_hash(secret: str) -> str:
    """What a record keeps of a delete secret: 96 bits of its SHA-256, base64url."""
    digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
    return base64.urlsafe_b64encode(digest).decode()[:SECRET_HASH_CHARS]


@dataclass(frozen=True, slots=True)
class Reference:
    """One upload of a file."""

    token: str
    created: int
    expires: int | None
    secret_hash: str

    def live(self, now: float) -> bool:
        return self.expires is None or self.expires > now

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, secret_hash(secret))

    def encode(self) -> str:
        expires = "" if self.expires is None else str(self.expires)
        return f"{self.token}:{self.created}:{expires}:{self.secret_hash}"

    @classmethod
    def decode(cls, text: str) -> Reference | None:
        parts = text.split(":")
        if len(parts) != 4 or not parts[0] or not parts[1].isdigit():
            return None
        if parts[2] and not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]) if parts[2] else None, parts[3])


@dataclass(frozen=True, slots=True)
class Record(FileFacts):
    """A stored file and its references.

    ``sha256`` is None for a file the service stored before it kept records (listed, but
    never a dedup target and never expiring); ``link`` None while it has no public link.
    """

    sha256: str | None
    references: tuple[Reference, ...]

    @classmethod
    def from_file(cls, file: FileRecord) -> Record:
        """The record a backend reported; fields it does not understand are ignored."""
        fields = file.fields
        sha256 = fields.get(SHA256_FIELD)
        created = fields.get(CREATED_FIELD, "")
        references = [Reference.decode(text) for text in fields.get(REFERENCES_FIELD, "").split()]
        return cls(
            id=file.id,
            name=file.name,
            size=file.size,
            created=int(created) if created.isdigit() else file.created,
            link=file.link,
            key=file.key,
            sha256=sha256 if sha256 and len(sha256) == 64 else None,
            references=tuple(ref for ref in references if ref is not None),
        )

    def fields(self) -> dict[str, str]:
        """The record as the backend stores it."""
        return {
            VERSION_FIELD: FORMAT,
            SHA256_FIELD: self.sha256 or "",
            CREATED_FIELD: str(self.created),
            REFERENCES_FIELD: " ".join(ref.encode() for ref in self.references),
        }

    def file(self) -> FileRecord:
        """The file as the backend knows it, to read or rewrite its record."""
        return FileRecord(
            self.id, self.name, self.size, self.created, self.link, self.key, self.fields()
        )

    def live(self, now: float) -> tuple[Reference, ...]:
        return tuple(ref for ref in self.references if ref.live(now))

    def with_references(self, references: tuple[Reference, ...]) -> Record:
        return replace(self, references=references)

    def with_link(self, link: str | None) -> Record:
        return replace(self, link=link)

    def next_expiry(self) -> int | None:
        """When a reference of this file next expires: when the sweeper must look at it."""
        times = [ref.expires for ref in self.references if ref.expires is not None]
        return min(times) if times else None

    def to_json(self) -> dict[str, Any]:
        """The record as the index keeps it."""
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "created": self.created,
            "link": self.link,
            "key": self.key,
            "sha256": self.sha256,
            "refs": [ref.encode() for ref in self.references],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        references = (Reference.decode(text) for text in data["refs"])
        return cls(
            id=data["id"],
            name=data["name"],
            size=data["size"],
            created=data["created"],
            link=data["link"],
            key=data["key"],
            sha256=data["sha256"],
            references=tuple(ref for ref in references if ref is not None),
        )
