"""Named tokens: who may upload, and how much.

``TOKENS_FILE`` (TOML) lists clients as ``[tokens.<name>]`` tables with the SHA-256 of
their token and optional limits. ``AUTH_TOKEN`` is one more token, named ``default``,
without limits (the contract of existing clients). The file is read again when it
changes (checked at most once a second, on use) or on SIGHUP; a bad file is refused with
one line naming the entry and the problem, and the last good one stays in force.

``python -m app.access.tokens new-token NAME`` makes a new random token: the entry for the file
on stdout (so that ``>> tokens.toml`` appends it), the token itself on stderr only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError

from app.access.last_good_tokens import LastGoodTokens

log = logging.getLogger(__name__)

DEFAULT_NAME = "default"
RECHECK_SECONDS = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TokensFileError(Exception):
    """The tokens file cannot be used; the message is one line, free of secrets."""


@dataclass(frozen=True)
class TokenPolicy:
    """One client: its name, its token's digest and its limits (None means no limit).

    ``digest`` changes when the token is rotated; tickets are bound to it, so rotating a
    token voids the tickets it issued.
    """

    name: str
    digest: str
    max_upload_bytes: int | None = None
    uploads_per_minute: int | None = None
    bytes_per_day: int | None = None
    services: frozenset[str] | None = None
    can_issue_tickets: bool = False
    # Upload records: list and delete its own uploads, or everyone's; how long its uploads
    # may be kept at most, and by default (days; None: no cap, the service's default).
    can_list: bool = False
    can_manage: bool = False
    max_expiry_days: float | None = None
    default_expiry_days: float | None = None

    def allows_service(self, service: str) -> bool:
        return self.services is None or service in self.services


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_sha256: str | None = None
    token: str | None = None
    max_upload_bytes: ByteSize | None = Field(default=None, gt=0)
    uploads_per_minute: int | None = Field(default=None, gt=0)
    bytes_per_day: ByteSize | None = Field(default=None, gt=0)
    services: list[str] | None = None
    can_issue_tickets: bool = False
    can_list: bool = False
    can_manage: bool = False
    max_expiry_days: float | None = Field(default=None, gt=0, le=36500)
    default_expiry_days: float | None = Field(default=None, gt=0, le=36500)


def token_sha256(token: str) -> str:
    """The hex digest the tokens file stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_tokens(text: str, max_upload_bytes: int) -> tuple[dict[str, TokenPolicy], list[str]]:
    """Policies by token digest, and warnings; TokensFileError names the entry at fault."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TokensFileError(f"not valid TOML: {error}") from None
    unknown = set(document) - {"tokens"}
    if unknown:
        raise TokensFileError(
            f"unknown top-level key {sorted(unknown)[0]!r} (only [tokens.<name>] tables)"
        )
    tables = document.get("tokens", {})
    if not isinstance(tables, dict):
        raise TokensFileError("'tokens' must be a table of [tokens.<name>] tables")
    policies: dict[str, TokenPolicy] = {}
    warnings = []
    for name, raw in tables.items():
        policy, digest, warning = _parse_entry(name, raw, max_upload_bytes)
        if digest in policies:
            raise TokensFileError(f"entry {name!r}: same token as entry {policies[digest].name!r}")
        policies[digest] = policy
        if warning:
            warnings.append(warning)
    return policies, warnings


def _parse_entry(name: str, raw: Any, max_upload_bytes: int) -> tuple[TokenPolicy, str, str]:
    where = f"entry {name!r}"
    if not _NAME.fullmatch(name):
        raise TokensFileError(f"{where}: names are 1-64 letters, digits, '_', '.' or '-'")
    if name == DEFAULT_NAME:
        raise TokensFileError(f"{where}: the name {DEFAULT_NAME!r} is reserved for AUTH_TOKEN")
    if not isinstance(raw, dict):
        raise TokensFileError(f"{where}: must be a table [tokens.{name}]")
    try:
        entry = _Entry.model_validate(raw)
    except ValidationError as error:
        first = error.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        raise TokensFileError(f"{where}: {field} {first['msg']}") from None
    warning = ""
    if (entry.token is None) == (entry.token_sha256 is None):
        raise TokensFileError(f"{where}: give exactly one of token_sha256 or token")
    if entry.token is not None:
        if len(entry.token) < 16:
            raise TokensFileError(f"{where}: token is shorter than 16 characters")
        digest = token_sha256(entry.token)
        warning = f'{where} has a plain token; store token_sha256 = "{digest}" instead'
    else:
        digest = (entry.token_sha256 or "").strip().lower()
        if not _SHA256.fullmatch(digest):
            raise TokensFileError(f"{where}: token_sha256 must be 64 hex digits")
    if entry.max_upload_bytes is not None and entry.max_upload_bytes > max_upload_bytes:
        raise TokensFileError(
            f"{where}: max_upload_bytes is larger than MAX_UPLOAD_BYTES ({max_upload_bytes})"
        )
    if (
        entry.default_expiry_days is not None
        and entry.max_expiry_days is not None
        and entry.default_expiry_days > entry.max_expiry_days
    ):
        raise TokensFileError(f"{where}: default_expiry_days is larger than max_expiry_days")
    policy = TokenPolicy(
        name=name,
        digest=digest,
        max_upload_bytes=entry.max_upload_bytes,
        uploads_per_minute=entry.uploads_per_minute,
        bytes_per_day=entry.bytes_per_day,
        services=frozenset(s.strip().lower() for s in entry.services)
        if entry.services is not None
        else None,
        can_issue_tickets=entry.can_issue_tickets,
        can_list=entry.can_list,
        can_manage=entry.can_manage,
        max_expiry_days=entry.max_expiry_days,
        default_expiry_days=entry.default_expiry_days,
    )
    return policy, digest, warning


def read_tokens_text(path: Path) -> str:
    """The text of the file at ``path``; TokensFileError (one line) if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "unreadable"
        raise TokensFileError(f"cannot read {path}: {reason}") from None


class TokenRegistry:
    """The tokens in force: AUTH_TOKEN as ``default`` plus the file's, kept up to date.

    A bad file stops the first process of a service (TokensFileError). With
    ``last_good`` (a gunicorn worker, see app/last_good_tokens.py) the service is already
    running: a bad file is then refused in one log line and the last good one is used.
    """

    def __init__(
        self,
        auth_token: str | None,
        path: Path | None,
        max_upload_bytes: int,
        last_good: LastGoodTokens | None = None,
    ) -> None:
        self._default = token_sha256(auth_token) if auth_token else None
        self._path = path
        self._max = max_upload_bytes
        self._last_good = last_good
        self._policies: dict[str, TokenPolicy] = {}
        self._by_name: dict[str, TokenPolicy] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._reload_requested = False
        self._lock = threading.Lock()
        if path is not None:
            self._seen = _stamp(path)
            self._install_first(path)

    def _install_first(self, path: Path) -> None:
        try:
            self._accept(read_tokens_text(path))
        except TokensFileError as error:
            if self._last_good is None:
                raise
            log.error("TOKENS_FILE refused, the previous tokens stay in force: %s", error)
            self._install(*parse_tokens(self._last_good.recall(), self._max))

    def _accept(self, text: str) -> None:
        """Install the tokens of ``text``, or raise TokensFileError and change nothing."""
        self._install(*parse_tokens(text, self._max))
        if self._last_good is not None:
            self._last_good.remember(text)

    def request_reload(self) -> None:
        """Read the file again on next use (SIGHUP)."""
        self._reload_requested = True

    def lookup(self, token: str) -> TokenPolicy | None:
        """The policy of ``token``, or None if it is not (or no longer) valid."""
        self._refresh()
        digest = token_sha256(token)
        policy = self._policies.get(digest)
        if policy is None and digest == self._default:
            return TokenPolicy(name=DEFAULT_NAME, digest=digest)
        return policy

    def by_name(self, name: str) -> TokenPolicy | None:
        """The current policy of the token called ``name`` (a ticket's issuer)."""
        self._refresh()
        if name == DEFAULT_NAME and self._default is not None:
            return TokenPolicy(name=DEFAULT_NAME, digest=self._default)
        return self._by_name.get(name)

    def _install(self, policies: dict[str, TokenPolicy], warnings: list[str]) -> None:
        for warning in warnings:
            log.warning("TOKENS_FILE: %s", warning)
        self._policies = policies
        self._by_name = {policy.name: policy for policy in policies.values()}

    def _refresh(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if not self._reload_requested and now - self._checked < RECHECK_SECONDS:
            return
        with self._lock:
            if not self._reload_requested and now - self._checked < RECHECK_SECONDS:
                return
            forced, self._reload_requested = self._reload_requested, False
            self._checked = now
            stamp = _stamp(self._path)
            if stamp == self._seen and not forced:
                return
            self._seen = stamp
            try:
                self._accept(read_tokens_text(self._path))
            except TokensFileError as error:
                log.error("TOKENS_FILE refused, the previous tokens stay in force: %s", error)
                return
            log.info("TOKENS_FILE reloaded: %d named tokens", len(self._policies))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def watch_sighup(reload: Callable[[], None]) -> Callable[[], None]:
    """Call ``reload`` on SIGHUP while the event loop runs; returns the undo.

    Only possible in the main thread of a process with SIGHUP (not on Windows, not in a
    test client's thread); there the file is still re-read when it changes.
    """
    try:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError):
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


def new_token_entry(name: str) -> tuple[str, str]:
    """A fresh random token and the tokens-file entry that admits it."""
    token = secrets.token_urlsafe(32)
    return token, f'[tokens.{name}]\ntoken_sha256 = "{token_sha256(token)}"\n'


def main(argv: list[str]) -> int:
    """``python -m app.access.tokens new-token [NAME]``."""
    if not argv or argv[0] != "new-token" or len(argv) > 2:
        print("usage: python -m app.access.tokens new-token [NAME]", file=sys.stderr)
        return 2
    name = argv[1] if len(argv) == 2 else "client"
    if not _NAME.fullmatch(name) or name == DEFAULT_NAME:
        print(f"invalid name {name!r}: 1-64 letters, digits, '_', '.' or '-'", file=sys.stderr)
        return 2
    token, entry = new_token_entry(name)
    # The file holds digests only: stdout, which `>> tokens.toml` appends, gets the entry
    # alone, and the token goes to the terminal on stderr.
    print(
        f"Token for the client {name!r} (give it to the client; it is stored nowhere):\n{token}",
        file=sys.stderr,
    )
    print(f"\n{entry}", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
