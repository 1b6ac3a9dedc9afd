"""Log output: readable text by default, one JSON object per line with LOG_FORMAT=json.

Every record made while a request is served carries its request id and the name of the
token that made it (never the token itself), through context variables the request
middleware sets.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

from app.serving.logs import redact_fields

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
token_name: contextvars.ContextVar[str] = contextvars.ContextVar("token_name", default="")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged
# (except uvicorn's terminal-coloured copy of its message).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, process id (which worker),
    request id, token name, and whatever the record was given with ``extra=``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if rid := request_id.get():
            entry["request_id"] = rid
        if name := token_name.get():
            entry["token"] = name
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                # Fields given with extra= (an upload's file name) missed the redaction
                # every record gets where it is made.
                entry[key] = redact_fields(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and redacted) where the record was made
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send the service's logs to stderr as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=log_format == "json")
    if log_format == "json":
        # uvicorn's and gunicorn's own loggers write through their own handlers; route
        # them through the JSON one so that every line is an object.
        for name in (
            "uvicorn",
            "uvicorn.error",
            "uvicorn.access",
            "gunicorn.error",
            "gunicorn.access",
        ):
            logger = logging.getLogger(name)
            logger.handlers = [handler]
            logger.propagate = False


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict`` for JSON lines (its access and error logs)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "root": {"level": level.upper(), "handlers": ["json"]},
        "loggers": {
            name: {"level": level.upper(), "handlers": ["json"], "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
    }
