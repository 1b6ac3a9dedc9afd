"""Log lines without secrets: every record of the process passes through ``redact``.

The access log writes each request's path with its query string, and a client may put a
token there (``?token=...``, ``/files/<token>``) even though the service only reads
tokens from headers; a library may put a secret into an error message. Rewriting records
where they are made (the log record factory) covers every logger and handler, including
the ones uvicorn and gunicorn configure after the service has started. Besides the
configured secrets, whatever looks like a credential is replaced (``looks_like_a_secret``):
the tokens of TOKENS_FILE are known here only by their digests.
"""

from __future__ import annotations

import itertools
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
# Upload tickets, whole (app/tickets.py: "pt1.<payload>.<signature>").
_TICKET = re.compile(r"(?<![A-Za-z0-9_.-])pt1\.[A-Za-z0-9_.-]+")
# Candidates for a credential: long runs of URL-safe base64, the alphabet of our tokens
# (secrets.token_urlsafe), of MEGA's keys and of most API keys. Local download handles
# (22 characters) are shorter: operators find uploads by them.
_RUN = re.compile(r"[A-Za-z0-9_-]{24,}")
_RANDOM_CLASS_CHANGES = 0.35
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def looks_like_a_secret(text: str) -> bool:
    """Whether ``text`` holds a ticket or a run shaped like a random token.

    Random base64 mixes cases and digits all along: between two neighbouring characters
    (``-`` and ``_`` left out) the kind (upper case, lower case, digit) changes about two
    times in three. Names change it at word boundaries only (``SharedStateUnavailable``,
    ``Screenshot_2024-05-12``: one time in five or less), and hex ids (request ids, UUIDs,
    SHA-256 digests) have a single case, so they stay readable. A 43-character token from
    ``secrets.token_urlsafe(32)`` passes for a name about once in 2,500.
    """
    return bool(_TICKET.search(text)) or any(
        _random_looking(run.group()) for run in _RUN.finditer(text)
    )


def _random_looking(run: str) -> bool:
    letters_and_digits = run.replace("-", "").replace("_", "")
    upper = sum(char.isupper() for char in letters_and_digits)
    lower = sum(char.islower() for char in letters_and_digits)
    if upper < 3 or lower < 3:
        return False
    kinds = [(char.isupper(), char.islower()) for char in letters_and_digits]
    changes = sum(kind != following for kind, following in itertools.pairwise(kinds))
    return changes >= _RANDOM_CLASS_CHANGES * (len(kinds) - 1)


def accepted_request_id(offered: str | None) -> str | None:
    """A client's ``X-Request-ID`` if it may be kept: short, plain, and not a credential
    (it is logged with every line of the request and sent back in the response)."""
    if offered and _REQUEST_ID.fullmatch(offered) and not looks_like_a_secret(offered):
        return offered
    return None


def _redact_shapes(text: str) -> str:
    text = _TICKET.sub(REDACTED, text)
    return _RUN.sub(lambda run: REDACTED if _random_looking(run.group()) else run.group(), text)


# A delete URL (/delete/<id>/<key>/<secret>) is a credential for that upload; the access
# log writes request paths.
_DELETE_PATH = re.compile(r"(/delete/[^/\s\"'?#]+/)[^\s\"'?#]+")


class Redactor:
    """Replaces the given secrets, every query-string value and whatever is shaped like a
    credential (``looks_like_a_secret``) in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = _QUERY_PARAMETER.sub(self._parameter, text)
        text = _MEGA_UPLOAD_PATH.sub(rf"\g<1>{REDACTED}", text)
        text = _DELETE_PATH.sub(rf"\g<1>{REDACTED}", text)
        text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
        return _redact_shapes(text)

    @staticmethod
    def _parameter(match: re.Match[str]) -> str:
        separator, name, value = match.groups()
        if name.lower() in _SHOWN_PARAMETERS or not value:
            return match.group(0)
        return f"{separator}{name}={REDACTED}"

    def value(self, value: Any) -> Any:
        """``value`` redacted if it is text, or holds text (a dict or list of fields)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value


_installed = Redactor(())


def redact_fields(value: Any) -> Any:
    """``value`` through the redactor of this process: for fields a formatter adds beyond
    the message (``extra=``, context variables), which the record factory never sees."""
    return _installed.value(value)


def install_redaction(secrets: Iterable[str]) -> None:
    """Make every log record of this process pass through a ``Redactor`` for ``secrets``.

    Arguments are redacted one by one rather than merged into the message, because
    uvicorn's access formatter reads them by position. Installing again replaces the
    previous redactor instead of stacking a second one.
    """
    global _installed
    redact = _installed = Redactor(secrets)
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
