"""Log lines without secrets: every record of the process passes through ``redact``.

The access log writes each request's path with its query string, and a client may put a
token there (``?token=...``) even though the service only reads tokens from headers; a
library may put a secret into an error message. Rewriting records where they are made
(the log record factory) covers every logger and handler, including the ones uvicorn and
gunicorn configure after the service has started.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
_TRACEBACK = logging.Formatter()
# Query parameters whose values are shown: nothing secret is ever sent in them.
_SHOWN_PARAMETERS = frozenset({"service"})
_QUERY_PARAMETER = re.compile(r"([?&;])([^=&;?#\s\"']*)=([^&;#\s\"']*)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+")
# The path of a MEGA upload URL is a credential for that upload (urllib3 logs request
# lines at DEBUG).
_MEGA_UPLOAD_PATH = re.compile(r"(/ul/)[^/\s\"']+")
# A delete URL (/delete/<id>/<key>/<secret>) is a credential for that upload; the access
# log writes request paths.
_DELETE_PATH = re.compile(r"(/delete/[^/\s\"'?#]+/)[^\s\"'?#]+")


class Redactor:
    """Replaces the given secrets and every query-string value in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = _QUERY_PARAMETER.sub(self._parameter, text)
        text = _MEGA_UPLOAD_PATH.sub(rf"\g<1>{REDACTED}", text)
        text = _DELETE_PATH.sub(rf"\g<1>{REDACTED}", text)
        return _BEARER.sub(rf"\g<1>{REDACTED}", text)

    @staticmethod
    def _parameter(match: re.Match[str]) -> str:
        separator, name, value = match.groups()
        if name.lower() in _SHOWN_PARAMETERS or not value:
            return match.group(0)
        return f"{separator}{name}={REDACTED}"

    def value(self, value: Any) -> Any:
        return self(value) if isinstance(value, str) else value


def install_redaction(secrets: Iterable[str]) -> None:
    """Make every log record of this process pass through a ``Redactor`` for ``secrets``.

    Arguments are redacted one by one rather than merged into the message, because
    uvicorn's access formatter reads them by position. Installing again replaces the
    previous redactor instead of stacking a second one.
    """
    redact = Redactor(secrets)
    make_record = logging.getLogRecordFactory()
    make_record = getattr(make_record, "unredacted", make_record)

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact.value(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: redact.value(arg) for key, arg in record.args.items()}
        if record.exc_info:
            # A traceback quotes exception texts, which may hold a secret or a URL with
            # one: formatted here, redacted, and handed on as text (formatters use
            # exc_text when exc_info is gone).
            record.exc_text = redact(_TRACEBACK.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    redacting_record.unredacted = make_record  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_record)
