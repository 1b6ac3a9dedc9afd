"""The gunicorn master's part in starting the service, called from gunicorn.conf.py.

Settings are checked once, in the master, when gunicorn reads its configuration: before
it binds the port or starts a worker. A bad value stops it with one line and exit status
3, instead of one error per worker followed by gunicorn's own report of their exits.

The master also keeps the instance's last good settings and opens its copy of the last
good tokens file (app/access/last_good_tokens.py). Workers are forked from the master, so
they inherit both (and this module's state) without being told: ``served_settings`` and
``last_good_tokens`` in a worker return them. On SIGHUP the master reads the settings
again (``.env`` may have changed) before gunicorn starts the new workers, and keeps them
only when they pass the start-up checks: a mistake is one line in the log instead of
workers that cannot start and a master that gives up.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Protocol

from app.access.last_good_tokens import LastGoodTokens
from app.access.tokens import TokensFileError, parse_tokens, read_tokens_text
from app.config import (
    ConfigError,
    Settings,
    check_served_settings,
    load_settings,
    tokens_file_error,
)
from app.serving.startup import stop_for

_checked = False
_settings: Settings | None = None
_last_good: LastGoodTokens | None = None


def check_once(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Check the settings gunicorn was started with; on a problem print one line and exit 3.

    gunicorn reads its configuration again on SIGHUP: the service is running by then,
    so later calls change nothing here (``reread`` takes the new settings).
    """
    global _checked, _settings, _last_good
    if _checked:
        return
    try:
        _check_port(argv, environ)
        _settings, _last_good = _checked_settings(running=None)
    except ConfigError as error:
        stop_for(error)
    _checked = True


class _Log(Protocol):
    def info(self, msg: str, *args: object) -> None: ...
    def error(self, msg: str, *args: object) -> None: ...


def reread(log: _Log | None = None) -> None:
    """On SIGHUP, before new workers start: take the settings as they are now when they
    pass the start-up checks, else keep the running ones and say so in one line (the
    values are never shown, as at start-up)."""
    global _settings, _last_good
    if not _checked:
        return
    log = log or logging.getLogger("paimon.config")
    refused = "settings refused on reload, the running settings stay in force: %s"
    try:
        _settings, _last_good = _checked_settings(running=_settings)
    except ConfigError as error:
        log.error(refused, error)
    except Exception as error:  # nothing in reading them may stop a running service
        log.error(refused, f"{type(error).__name__} while reading them")
    else:
        log.info("settings read again on reload")


def _checked_settings(running: Settings | None) -> tuple[Settings, LastGoodTokens | None]:
    """The settings as they are now, and the instance's copy of the tokens file they name.

    On a reload (``running`` given), a mistake in the same tokens file is left to the
    workers, which keep its last good version; a tokens file newly named must be good,
    as at start-up.
    """
    settings = _served()
    path = settings.access.tokens_file
    if path is None:
        return settings, _last_good
    try:
        text = read_tokens_text(path)
        parse_tokens(text, int(settings.access.max_upload_bytes))
    except TokensFileError as error:
        same_file = running is not None and running.access.tokens_file == path
        if same_file and _last_good is not None:
            return settings, _last_good
        raise tokens_file_error(error) from None
    if _last_good is None:
        return settings, _keep(text)
    _last_good.remember(text)
    return settings, _last_good


def served_settings() -> Settings:
    """The settings to serve with: in a process forked from a gunicorn master, the last
    good ones it checked (a worker started after a bad edit of ``.env`` starts with
    them instead of stopping the service); elsewhere, read now."""
    return _settings if _settings is not None else _served()


def _served() -> Settings:
    settings = load_settings()
    check_served_settings(settings)
    return settings


def _keep(text: str) -> LastGoodTokens:
    try:
        return LastGoodTokens(text)
    except OSError as error:
        raise ConfigError(
            f"TMPDIR {tempfile.gettempdir()} cannot hold the workers' copy of TOKENS_FILE "
            f"({error.strerror}); point TMPDIR at a writable directory"
        ) from None


def last_good_tokens() -> LastGoodTokens | None:
    """The instance's last good tokens file when this process is (forked from) a gunicorn
    master that has one, else None."""
    return _last_good


def _check_port(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Name PORT when the start command's ``--bind 0.0.0.0:$PORT`` is left without a port
    (gunicorn itself would only say ``'' is not a valid port number``)."""
    port = environ.get("PORT")
    if port is not None and not port.strip():
        raise ConfigError("PORT is empty (set it to the port to listen on, e.g. PORT=8080)")
    if port is None:
        for bind in _binds(argv):
            if bind.endswith(":") and not bind.startswith(("unix:", "fd://")):
                raise ConfigError(
                    f"PORT is not set, so --bind {bind} has no port "
                    "(set it to the port to listen on, e.g. PORT=8080)"
                )


def _binds(argv: Sequence[str]) -> list[str]:
    """The addresses given to gunicorn's ``-b``/``--bind`` options."""
    binds = []
    arguments = iter(argv)
    for argument in arguments:
        if argument in {"-b", "--bind"}:
            binds.append(next(arguments, ""))
        elif argument.startswith("--bind="):
            binds.append(argument.removeprefix("--bind="))
        elif argument.startswith("-b") and not argument.startswith("--"):
            binds.append(argument.removeprefix("-b"))
    return binds
