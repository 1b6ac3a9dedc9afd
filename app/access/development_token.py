"""The development run's token: made once, kept in the data directory, the same on every run.

``python server.py`` without AUTH_TOKEN (or TOKENS_FILE) makes a token up. A new one on
every restart would break the upload page's remembered token and ``PAIMON_TOKEN`` each
time, so it is kept in a file only this user can read, next to the other data of a
development run.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

# Relative to the working directory, like the development run's files (data/files) and
# its MEGA session (data/mega-session.json).
DEVELOPMENT_TOKEN_FILE = Path("data") / "development-token"
_MIN_LENGTH = 16


class DevelopmentTokenError(Exception):
    """The token file cannot be used; the message is one line."""


def development_token(path: Path = DEVELOPMENT_TOKEN_FILE) -> tuple[str, bool]:
    """The token kept at ``path``, made (mode 0600) if there is none; and whether it is new."""
    kept = _read(path)
    if kept is not None:
        return kept, False
    token = secrets.token_urlsafe(32)
    _write(path, token)
    return token, True


def _read(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise DevelopmentTokenError(f"{path} cannot be read: {error.strerror}") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise DevelopmentTokenError(f"{path} is not a file of this user")
        if info.st_mode & 0o077:
            os.fchmod(file.fileno(), 0o600)  # a copy or an editor may have widened it
        token = file.read().strip()
    # Anything that is not a usable token (an emptied file) is replaced by a new one.
    if len(token) < _MIN_LENGTH or not token.isprintable() or " " in token:
        return None
    return token


def _write(path: Path, token: str) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(partial, flags, 0o600), "w", encoding="utf-8") as file:
                file.write(token + "\n")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as error:
        raise DevelopmentTokenError(f"{path} cannot be written: {error.strerror}") from None
