"""MEGA failures, and the one table that decides what each of them leads to.

Every failure the MEGA client or the upload path can meet has a *name* (``EAGAIN``,
``timeout``, ``HTTP_503`` ...). ``RULES`` maps each name to an action (retry, log in
again, restart the upload, fail) and, for when it ends the request, the storage
domain error and the client-safe message. ``action_for`` and ``to_storage_error``
only read the table; nothing else in the package decides these things.

Messages here are shown to clients: they name the MEGA error, never a password,
session id, key, URL or the text of an underlying exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from app.storage.base import (
    StorageError,
    StorageFull,
    StorageLoginFailed,
    StorageTimeout,
    StorageUnavailable,
    UpstreamRejected,
)

# MEGA API error codes (negative integers in the answer).
EINTERNAL = -1
EARGS = -2
EAGAIN = -3
ERATELIMIT = -4
EFAILED = -5
ETOOMANY = -6
ERANGE = -7
EEXPIRED = -8
ENOENT = -9
ECIRCULAR = -10
EACCESS = -11
EEXIST = -12
EINCOMPLETE = -13
EKEY = -14
ESID = -15
EBLOCKED = -16
EOVERQUOTA = -17
ETEMPUNAVAIL = -18
ETOOMANYCONNECTIONS = -19

CODE_NAMES: dict[int, str] = {
    EINTERNAL: "EINTERNAL",
    EARGS: "EARGS",
    EAGAIN: "EAGAIN",
    ERATELIMIT: "ERATELIMIT",
    EFAILED: "EFAILED",
    ETOOMANY: "ETOOMANY",
    ERANGE: "ERANGE",
    EEXPIRED: "EEXPIRED",
    ENOENT: "ENOENT",
    ECIRCULAR: "ECIRCULAR",
    EACCESS: "EACCESS",
    EEXIST: "EEXIST",
    EINCOMPLETE: "EINCOMPLETE",
    EKEY: "EKEY",
    ESID: "ESID",
    EBLOCKED: "EBLOCKED",
    EOVERQUOTA: "EOVERQUOTA",
    ETEMPUNAVAIL: "ETEMPUNAVAIL",
    ETOOMANYCONNECTIONS: "ETOOMANYCONNECTIONS",
    -20: "EWRITE",
    -21: "EREAD",
    -22: "EAPPKEY",
}


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, f"E{code}")


# -- the failures ---------------------------------------------------------------


class MegaError(Exception):
    """Base of every failure raised by the MEGA client; ``str()`` is safe to log."""

    name = "MEGA_ERROR"


class MegaApiError(MegaError):
    """MEGA answered a command (or a whole request, or an upload chunk) with an error code."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.name = code_name(code)
        super().__init__(f"MEGA answered {self.name} ({code})")


class MegaChunkError(MegaApiError):
    """The upload server answered a chunk POST with an error code. The codes are the API's,
    but a few mean something else there: the table's ``chunk <NAME>`` rows say what."""

    scope = "chunk"


class StreamCannotRestart(MegaError):
    """MEGA wants the upload started again on a fresh URL, but the body was streamed from
    the client as it arrived and the part already sent is no longer held."""

    name = "stream_restart"

    def __init__(self, cause: MegaError) -> None:
        self.cause = cause
        super().__init__(f"MEGA asked to restart a streamed upload ({cause.name})")


class MegaLoginError(MegaError):
    """MEGA refused to log in (wrong credentials, blocked account), or a recent refusal
    is still cooling down. ``code`` is the MEGA code of the refusal."""

    def __init__(self, code: int, *, cooling_down: bool = False) -> None:
        self.code = code
        self.cooling_down = cooling_down
        # ENOENT answered to 'us' means the email/password pair is unknown.
        self.name = "EBLOCKED" if code == EBLOCKED else "login_rejected"
        reason = "the account is blocked" if code == EBLOCKED else "wrong email or password"
        suffix = " (not retrying yet)" if cooling_down else ""
        super().__init__(f"MEGA login failed: {reason}{suffix}")


class MegaHttpError(MegaError):
    """An answer with an unexpected HTTP status (5xx, 429, 403 on an upload URL ...)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.name = "HTTP_5xx" if 500 <= status < 600 and status != 509 else f"HTTP_{status}"
        super().__init__(f"MEGA answered HTTP {status}")


class MegaTransportError(MegaError):
    """The connection failed or timed out. Raised *instead of* the requests exception,
    whose text contains the request URL and with it the session id."""

    def __init__(self, kind: str) -> None:
        if kind not in ("timeout", "connection"):
            raise ValueError(kind)
        self.name = kind
        super().__init__(
            "MEGA did not answer in time" if kind == "timeout" else "could not connect to MEGA"
        )


class MegaBadAnswer(MegaError):
    """MEGA's answer could not be parsed."""

    name = "bad_answer"

    def __init__(self) -> None:
        super().__init__("MEGA sent an answer that could not be read")


class MegaRetriesExhausted(MegaError):
    """A retryable failure kept happening until the attempts ran out."""

    name = "exhausted"

    def __init__(self, attempts: int, last: BaseException) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(
            f"MEGA kept failing after {attempts} attempts (last: {failure_name(last)})"
        )


class MegaDeadlineExceeded(MegaError):
    """Retrying went on until the total deadline."""

    name = "deadline"

    def __init__(self, attempts: int, deadline_s: float, last: BaseException | None) -> None:
        self.attempts = attempts
        self.deadline_s = deadline_s
        self.last = last
        super().__init__(f"MEGA did not succeed within {deadline_s:g} s ({attempts} attempts)")


class HashcashUnsolved(MegaError):
    """MEGA's proof-of-work challenge could not be solved before its deadline, or was malformed."""

    name = "hashcash"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__("MEGA asked for a proof of work that could not be solved in time")


class LoginLockTimeout(MegaError):
    """Another process held the log-in lock for too long."""

    name = "login_lock"

    def __init__(self) -> None:
        super().__init__("timed out waiting for another process to log in to MEGA")


# -- the table -----------------------------------------------------------------------


class Action(Enum):
    RETRY = "retry"  # back off (exponential + jitter) and repeat, within attempts and deadline
    RELOGIN = "relogin"  # log in again, then repeat the call once
    RESTART_UPLOAD = "restart_upload"  # upload path: fresh upload URL, send the file again
    FAIL = "fail"  # give up now


@dataclass(frozen=True, slots=True)
class Rule:
    action: Action
    error: type[StorageError]
    message: str


_RETRY_MSG = "MEGA is temporarily unavailable ({name})"
_REJECTED = "MEGA rejected the request ({name})"

RULES: dict[str, Rule] = {
    # Transient: back off and repeat.
    "EAGAIN": Rule(Action.RETRY, UpstreamRejected, _RETRY_MSG),
    "ERATELIMIT": Rule(Action.RETRY, UpstreamRejected, _RETRY_MSG),
    "ETEMPUNAVAIL": Rule(Action.RETRY, UpstreamRejected, _RETRY_MSG),
    "ETOOMANYCONNECTIONS": Rule(Action.RETRY, UpstreamRejected, _RETRY_MSG),
    "connection": Rule(Action.RETRY, StorageUnavailable, "could not connect to MEGA"),
    "timeout": Rule(Action.RETRY, StorageTimeout, "MEGA did not answer in time"),
    "HTTP_5xx": Rule(Action.RETRY, UpstreamRejected, "MEGA answered with a server error"),
    "HTTP_429": Rule(Action.RETRY, UpstreamRejected, "MEGA asked to slow down"),
    # The session is gone: log in again, repeat once.
    "ESID": Rule(Action.RELOGIN, UpstreamRejected, "MEGA rejected the session"),
    # Upload target dead: fresh upload URL, start the file again.
    "EEXPIRED": Rule(Action.RESTART_UPLOAD, UpstreamRejected, "MEGA upload URL expired"),
    "EFAILED": Rule(Action.RESTART_UPLOAD, UpstreamRejected, "MEGA upload failed"),
    "HTTP_403": Rule(Action.RESTART_UPLOAD, UpstreamRejected, "MEGA upload URL expired"),
    "HTTP_404": Rule(Action.RESTART_UPLOAD, UpstreamRejected, "MEGA upload URL expired"),
    # On the upload server -4 is no rate limit: it says "start again on a fresh URL".
    "chunk ERATELIMIT": Rule(
        Action.RESTART_UPLOAD, UpstreamRejected, "MEGA asked to start the upload again"
    ),
    # A streamed body is sent while it arrives, so a restart from the start is impossible
    # without keeping the whole file; the client is told to send it again instead.
    "stream_restart": Rule(
        Action.FAIL,
        UpstreamRejected,
        "MEGA asked to start the upload again, which a streamed upload cannot do; "
        "send the file again",
    ),
    # Fail at once.
    "EOVERQUOTA": Rule(Action.FAIL, StorageFull, "MEGA storage quota exceeded"),
    "HTTP_509": Rule(Action.FAIL, UpstreamRejected, "MEGA transfer quota exceeded"),
    "EBLOCKED": Rule(Action.FAIL, StorageLoginFailed, "MEGA login failed: the account is blocked"),
    "login_rejected": Rule(
        Action.FAIL, StorageLoginFailed, "MEGA login failed: wrong email or password"
    ),
    "EARGS": Rule(Action.FAIL, UpstreamRejected, _REJECTED),
    "ENOENT": Rule(Action.FAIL, UpstreamRejected, _REJECTED),
    "EACCESS": Rule(Action.FAIL, UpstreamRejected, _REJECTED),
    "exhausted": Rule(Action.FAIL, UpstreamRejected, "MEGA kept failing after {attempts} attempts"),
    "deadline": Rule(Action.FAIL, StorageTimeout, "MEGA did not succeed within {deadline} s"),
    "hashcash": Rule(
        Action.FAIL,
        StorageUnavailable,
        "MEGA asked for a proof of work that could not be solved in time",
    ),
    "login_lock": Rule(Action.FAIL, StorageTimeout, "timed out waiting for the MEGA login"),
    "bad_answer": Rule(Action.FAIL, UpstreamRejected, "MEGA sent an answer that could not be read"),
}
# Anything not named above (other codes, other HTTP statuses, unexpected exceptions).
DEFAULT_RULE = Rule(Action.FAIL, UpstreamRejected, _REJECTED)


def failure_name(exc: BaseException) -> str:
    """The table key of a failure."""
    if isinstance(exc, MegaError):
        return exc.name
    return type(exc).__name__


def rule_for(exc: BaseException) -> Rule:
    name = failure_name(exc)
    scope = getattr(exc, "scope", None)
    if scope is not None and f"{scope} {name}" in RULES:
        return RULES[f"{scope} {name}"]
    return RULES.get(name, DEFAULT_RULE)


def action_for(exc: BaseException) -> Action:
    """What to do about ``exc``: the retry predicates of the client and upload path use this."""
    return rule_for(exc).action


def is_retryable(exc: BaseException) -> bool:
    return action_for(exc) is Action.RETRY


def to_storage_error(exc: BaseException) -> StorageError:
    """The storage domain error (with a client-safe message) for a MEGA failure."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, MegaRetriesExhausted):
        # Out of attempts on timeouts is a timeout, and on connection errors MEGA is out
        # of reach (503, worth trying later), not a rejection.
        if failure_name(exc.last) == "timeout":
            return StorageTimeout(f"MEGA did not answer in time after {exc.attempts} attempts")
        if failure_name(exc.last) == "connection":
            return StorageUnavailable(f"could not connect to MEGA after {exc.attempts} attempts")
        return UpstreamRejected(RULES["exhausted"].message.format(attempts=exc.attempts))
    if isinstance(exc, MegaDeadlineExceeded):
        return StorageTimeout(RULES["deadline"].message.format(deadline=f"{exc.deadline_s:g}"))
    name = failure_name(exc)
    rule = rule_for(exc)
    shown = name if isinstance(exc, MegaError) else "unexpected error"
    return rule.error(rule.message.format(name=shown))
