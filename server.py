"""Entry point.

``python server.py`` runs a single development server; ``python server.py mega-session``
logs in to MEGA once and prints a ``MEGA_SESSION`` value; ``python server.py sweep``
deletes expired uploads once (for cron jobs). ``server:app`` is what gunicorn
and uvicorn import; it is built on first access, so importing this module reads nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from dotenv import dotenv_values
from fastapi import FastAPI

from app.access.development_token import (
    DEVELOPMENT_TOKEN_FILE,
    DevelopmentTokenError,
    development_token,
)
from app.access.tokens import TokensFileError
from app.config import (
    ConfigError,
    Settings,
    generate_token,
    load_settings,
    tokens_file_error,
)
from app.logging_setup import configure_logging
from app.main import create_app
from app.serving import master
from app.serving.logs import install_redaction
from app.serving.protocol import limited_protocol
from app.serving.startup import BOOT_ERROR, stop_for
from app.storage.base import StorageLoginFailed

_app = None

# Uploads keep several worker threads busy with crypto and sockets. A shorter interval
# than the default 5 ms hands the interpreter lock back to the event loop sooner, so
# /health and other small requests are not queued behind them. Measured on 2 cores with
# 8 uploads at once: /health p99 about 36 ms with 1 ms, about 43 ms with the default.
sys.setswitchinterval(0.001)


def _refused(error: StorageLoginFailed) -> None:
    """Credentials MEGA refuses can never work: stop, so that the deploy fails visibly.
    Exit status 3 also makes gunicorn stop instead of starting the worker again."""
    print(f"paimon-server: cannot start: {error}", file=sys.stderr, flush=True)
    os._exit(BOOT_ERROR)


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.serving.log_level, settings.serving.log_format)
    secrets = [
        settings.access.auth_token,
        settings.mega.password,
        settings.mega.totp_secret,
        settings.mega.session,
        settings.access.ticket_secret,
        settings.access.metrics_token,
        settings.redis_url,
    ]
    install_redaction(secret.get_secret_value() for secret in secrets if secret is not None)
    if "*" in os.environ.get("FORWARDED_ALLOW_IPS", ""):
        logging.getLogger("paimon.http").warning(
            "FORWARDED_ALLOW_IPS is '*': every client may write the address the service "
            "sees (X-Forwarded-For), dodging the per-address limits; list the proxy instead"
        )


def __getattr__(name: str) -> Any:
    """``server.app``: the production app, strictly configured from the environment."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        try:
            settings = master.served_settings()
        except ConfigError as error:
            stop_for(error)
        _configure_logging(settings)
        _app = _create_app(settings)
    return _app


def _create_app(settings: Settings) -> FastAPI:
    # In a gunicorn worker the master has checked TOKENS_FILE and keeps the instance's
    # last good one: a file that went bad since is refused in the log instead of stopping.
    try:
        return create_app(settings, on_refused=_refused, last_good_tokens=master.last_good_tokens())
    except TokensFileError as error:
        stop_for(tokens_file_error(error))


def _development_settings() -> tuple[Settings, list[str]]:
    """Settings with two conveniences for a first run, announced, never silent."""
    given = {**dotenv_values(".env"), **os.environ}
    configured = {key.upper() for key, value in given.items() if value}
    overrides: dict[str, Any] = {}
    notes = []
    if not configured & {"AUTH_TOKEN", "TOKENS_FILE"}:
        try:
            overrides["auth_token"], made = development_token(DEVELOPMENT_TOKEN_FILE)
        except DevelopmentTokenError as error:
            raise ConfigError(f"AUTH_TOKEN is not set, and the development token {error}") from None
        notes.append(_token_note(overrides["auth_token"], made))
    if "STORAGE_BACKEND" not in configured and "MEGA_EMAIL" not in configured:
        overrides["storage_backend"] = "local"
    settings = load_settings(**overrides)
    if "storage_backend" in overrides:
        notes.append(
            "STORAGE_BACKEND and MEGA_EMAIL are not set; storing files on local disk in "
            f"{settings.local.storage_dir.resolve()}"
        )
    if "PUBLIC_BASE_URL" not in configured and settings.storage_backend == "local":
        # Never from the request's Host header, which any client chooses.
        host = (
            "localhost"
            if settings.serving.host in {"0.0.0.0", "::", "127.0.0.1"}
            else settings.serving.host
        )
        settings = load_settings(
            **overrides, public_base_url=f"http://{host}:{settings.serving.port}"
        )
        notes.append(f"PUBLIC_BASE_URL is not set; links point at {settings.public_base_url}")
    return settings, notes


def _token_note(token: str, made: bool) -> str:
    """Where the development token is; the token itself only to a terminal, where a person
    reads it, never into a log file or a collector that stderr may be going to."""
    path = DEVELOPMENT_TOKEN_FILE
    kept = f"made a token and keeps it in {path}" if made else f"using the token kept in {path}"
    shown = f": {token}" if sys.stderr.isatty() else f" (export TOKEN=$(cat {path}))"
    return f"AUTH_TOKEN is not set; {kept} (mode 0600, the same on every run){shown}"


def mega_session() -> None:
    """Log in to MEGA with MEGA_EMAIL/MEGA_PASSWORD(/MEGA_TOTP_SECRET) and print one line
    for MEGA_SESSION. The line is a credential; it goes to stdout only, never to a log."""
    from app.storage.mega.session_command import print_session

    try:
        settings = load_settings(auth_token=generate_token(), storage_backend="mega")
    except ConfigError as error:
        stop_for(error)
    raise SystemExit(print_session(settings))


def sweep() -> None:
    """Delete expired uploads once, with the service's settings; exit 0 when done."""
    from app.records.command import run_sweep

    try:
        # No client uploads through this process: it needs no token of its own.
        settings = load_settings(auth_token=generate_token())
    except ConfigError as error:
        stop_for(error)
    _configure_logging(settings)
    raise SystemExit(run_sweep(settings))


def main() -> None:
    import uvicorn

    if sys.argv[1:] == ["mega-session"]:
        mega_session()
    if sys.argv[1:] == ["sweep"]:
        sweep()

    try:
        settings, notes = _development_settings()
    except ConfigError as error:
        stop_for(error)
    _configure_logging(settings)
    for note in notes:
        print(f"paimon-server (development run): {note}", file=sys.stderr, flush=True)
    uvicorn.run(
        _create_app(settings),
        host=settings.serving.host,
        port=settings.serving.port,
        log_level=settings.serving.log_level,
        # With JSON logs, uvicorn's loggers keep the JSON handler configure_logging gave them.
        log_config=None if settings.serving.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=30,
        # The request-head limits and per-address connection cap (app/serving/protocol.py).
        http=limited_protocol(settings),
        # One process: WEB_CONCURRENCY, which uvicorn would read, is gunicorn's setting.
        workers=1,
    )


if __name__ == "__main__":
    main()
