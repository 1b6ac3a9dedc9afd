"""Client-supplied file names, made safe to store and to show."""

from __future__ import annotations

import unicodedata

from app.intake.errors import InvalidFilename

MAX_NAME_BYTES = 255  # the usual file-system limit for one path component


def safe_filename(raw: str) -> str:
    """Return the last path component of ``raw`` without control or format characters.

    Clients send anything from ``report.pdf`` to ``C:\\Users\\me\\report.pdf`` or
    ``../../etc/passwd``; only the final component is kept. Bidirectional overrides and
    other invisible characters are dropped so the stored name looks like what it is.
    """
    name = unicodedata.normalize("NFC", raw)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co"})
    name = name.strip()
    if not name.strip("."):
        raise InvalidFilename("the file name is empty or invalid")
    name = _truncate(name)
    if not name.strip("."):  # cutting a long name can leave only dots behind
        raise InvalidFilename("the file name is empty or invalid")
    return name


def _truncate(name: str) -> str:
    """Cut ``name`` to MAX_NAME_BYTES of UTF-8, keeping a short extension when there is one."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = MAX_NAME_BYTES - len(suffix.encode())
    cut = stem.encode()[:budget].decode(errors="ignore")
    return cut.rstrip() + suffix


# What a file is called when the client gave no name, or one that cleans to nothing
# (`curl -F "file=<x"`, libcurl's curl_mime_data, screenshots uploaded from memory).
DEFAULT_NAME = "upload.bin"


def filename_or_default(raw: str | None) -> str:
    """``safe_filename(raw)``, or DEFAULT_NAME when there is nothing usable in ``raw``."""
    try:
        return safe_filename(raw or "")
    except InvalidFilename:
        return DEFAULT_NAME
