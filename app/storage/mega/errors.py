"""The MEGA failures and the one catalogue that says what each one means.

Every failure the client, the log-in and the upload path can meet is a ``MegaError``
subclass, and each one carries its catalogue entry (``failure``): a ``Failure`` naming
what to do (retry, log in again, restart the upload on a fresh URL, fail) and how fast
(``Pace``), and, for when it ends the request, the storage domain error and the
client-safe message. Entries are constants and MEGA's codes map to them through typed
tables (``API_CODES``, ``UPLOAD_CODES``, ``http_failure``, ``upload_http_failure``):
nothing is looked up by a string key, so a typo is an ``AttributeError`` or
``NameError`` at import, not a silent default.

Codes and their meanings follow MEGA's own clients: the C++ SDK's ``include/mega/types.h``
(the ``API_E*`` list) and ``src/transferslot.cpp`` (what the upload server's answers
mean), and the web client's ``js/utils/api.js`` / ``js/transfers/upload2.js``.

Messages here are shown to clients: they name the MEGA error, never a password,
session id, key, URL or the text of an underlying exception.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from app.storage.base import (
    StorageBlocked,
    StorageError,
    StorageFull,
    StorageLoginFailed,
    StorageTimeout,
    StorageUnavailable,
    UpstreamRejected,
)

logger = logging.getLogger(__name__)

# MEGA API error codes (negative integers), as include/mega/types.h names them.
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
EWRITE = -20
EREAD = -21
EAPPKEY = -22
ESSL = -23
EGOINGOVERQUOTA = -24
EROLLEDBACK = -25
EMFAREQUIRED = -26
EMASTERONLY = -27
EBUSINESSPASTDUE = -28
EPAYWALL = -29
ESUBUSERKEYMISSING = -30

CODE_NAMES: dict[int, str] = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith("E") and name.isupper()
}


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, f"E{code}")


# -- the catalogue ---------------------------------------------------------------


class Action(Enum):
    RETRY = "retry"  # wait (see Pace) and repeat, within attempts and deadline
    RELOGIN = "relogin"  # log in again, then repeat the call once
    RESTART_UPLOAD = "restart_upload"  # upload path: fresh upload URL, send the file again
    FAIL = "fail"  # give up now


class Pace(Enum):
    """How long to wait before trying again, and whether the try counts (``retry.py``)."""

    # The SDK's BackoffTimer (src/backofftimer.cpp): doubling with jitter, capped; counted
    # against the policy's attempts.
    BACKOFF = "backoff"
    # MEGA asked to slow down: the web client's rate-limit waits (js/utils/api.js,
    # errorHandler), which MEGA's clients keep up for as long as it takes; here until
    # the deadline, not counted.
    RATE_LIMIT = "rate_limit"
    # The upload server's HTTP 429 and 503: the SDK's fixed 0.5 s and 5 s before the same
    # piece again (src/transferslot.cpp, processRequestFailure); not counted either.
    UPLOAD_SLOW_DOWN = "upload_slow_down"
    UPLOAD_BUSY = "upload_busy"


@dataclass(frozen=True, slots=True)
class Failure:
    """One catalogue entry. ``message`` may use ``{name}`` (the MEGA code's name)."""

    action: Action
    error: type[StorageError]
    message: str
    pace: Pace = Pace.BACKOFF


_TEMPORARY = "MEGA is temporarily unavailable ({name})"
_REJECTED = "MEGA rejected the request ({name})"

TEMPORARY = Failure(Action.RETRY, UpstreamRejected, _TEMPORARY)
REJECTED = Failure(Action.FAIL, UpstreamRejected, _REJECTED)
SESSION_GONE = Failure(Action.RELOGIN, UpstreamRejected, "MEGA rejected the session")
UPLOAD_URL_DEAD = Failure(Action.RESTART_UPLOAD, UpstreamRejected, "MEGA upload URL expired")
UPLOAD_RESTART = Failure(
    Action.RESTART_UPLOAD, UpstreamRejected, "MEGA asked to start the upload again ({name})"
)
CHUNK_RESEND = Failure(Action.RETRY, UpstreamRejected, "MEGA could not check a piece ({name})")
STORAGE_FULL = Failure(Action.FAIL, StorageFull, "MEGA storage quota exceeded ({name})")
TRANSFER_QUOTA = Failure(Action.FAIL, UpstreamRejected, "MEGA transfer quota exceeded")
SERVER_ERROR = Failure(Action.RETRY, UpstreamRejected, "MEGA answered with a server error")
RATE_LIMITED = Failure(
    Action.RETRY, UpstreamRejected, "MEGA asked to slow down ({name})", Pace.RATE_LIMIT
)
UPLOAD_SLOW_DOWN = Failure(
    Action.RETRY, UpstreamRejected, "MEGA asked to slow down", Pace.UPLOAD_SLOW_DOWN
)
UPLOAD_BUSY = Failure(
    Action.RETRY, UpstreamRejected, "MEGA's upload server was busy", Pace.UPLOAD_BUSY
)
CONNECTION = Failure(Action.RETRY, StorageUnavailable, "could not connect to MEGA")
TIMEOUT = Failure(Action.RETRY, StorageTimeout, "MEGA did not answer in time")
BAD_ANSWER = Failure(Action.FAIL, UpstreamRejected, "MEGA sent an answer that could not be read")
LOGIN_REFUSED = Failure(Action.FAIL, StorageLoginFailed, "MEGA login failed: {name}")
ACCOUNT_BLOCKED = Failure(Action.FAIL, StorageBlocked, "the MEGA account is blocked ({name})")
LOGGING_IN = Failure(
    Action.FAIL, StorageUnavailable, "the service is logging in to MEGA; try again shortly"
)
LOGIN_LOCK = Failure(
    Action.FAIL, StorageTimeout, "timed out waiting for another process to log in to MEGA"
)
FOLDER_LOCK = Failure(
    Action.FAIL, StorageTimeout, "timed out waiting for another process to create the MEGA folder"
)
HASHCASH = Failure(
    Action.FAIL,
    StorageUnavailable,
    "MEGA asked for a proof of work that could not be solved in time",
)
INSECURE_UPLOAD_URL = Failure(
    Action.FAIL, UpstreamRejected, "MEGA offered an unencrypted upload URL; not sending the file"
)
# A streamed body is sent while it arrives, so a restart from the start is impossible
# without keeping the whole file; the client is told to send it again instead.
STREAM_RESTART = Failure(
    Action.FAIL,
    UpstreamRejected,
    "MEGA asked to start the upload again, which a streamed upload cannot do; send the file again",
)
EXHAUSTED = Failure(Action.FAIL, UpstreamRejected, "MEGA kept failing after {name} attempts")
DEADLINE = Failure(Action.FAIL, StorageTimeout, "MEGA did not succeed within {name} s")
UNEXPECTED = Failure(Action.FAIL, UpstreamRejected, _REJECTED)

# What an API answer's code means (a whole request's, or one command's).
API_CODES: dict[int, Failure] = {
    EAGAIN: TEMPORARY,
    ERATELIMIT: RATE_LIMITED,
    ETEMPUNAVAIL: TEMPORARY,
    ETOOMANYCONNECTIONS: TEMPORARY,
    ESID: SESSION_GONE,
    EEXPIRED: UPLOAD_URL_DEAD,
    EFAILED: UPLOAD_RESTART,
    # -17 over quota, -24 the file would go over it, -29 the account is over its quota
    # and MEGA's paywall stops writes (types.h; commands.cpp sends the paywall to the app).
    EOVERQUOTA: STORAGE_FULL,
    EGOINGOVERQUOTA: STORAGE_FULL,
    EPAYWALL: STORAGE_FULL,
}

# What the upload server's codes mean: they are the API's numbers, but not its meanings.
# src/transferslot.cpp: -4 ("cannot be continued on that server") fails the transfer with
# API_EAGAIN, and src/transfer.cpp retries an API_EAGAIN transfer from the start on a fresh
# URL, as it does -6 and -7 (File::failed in src/file.cpp lets every code but a few
# restart); -14 (integrity check failed) puts the same piece back to be sent again.
# js/transfers/upload2.js does the same ("$FATAL" for all of them but EKEY).
UPLOAD_CODES: dict[int, Failure] = {
    EAGAIN: UPLOAD_RESTART,
    ERATELIMIT: UPLOAD_RESTART,
    ETOOMANY: UPLOAD_RESTART,
    ERANGE: UPLOAD_RESTART,
    EKEY: CHUNK_RESEND,
    EEXPIRED: UPLOAD_URL_DEAD,
    EFAILED: UPLOAD_RESTART,
    EOVERQUOTA: STORAGE_FULL,
    EGOINGOVERQUOTA: STORAGE_FULL,
    EPAYWALL: STORAGE_FULL,
}

# Why MEGA refused a log-in, by the code 'us' answered.
LOGIN_REASONS: dict[int, str] = {
    ENOENT: "wrong email or password",
    EMFAREQUIRED: "the account has two-factor authentication; set MEGA_TOTP_SECRET",
}


# Why MEGA blocked the account, by what 'whyamiblocked' answers (the SDK's megaapi.h,
# ACCOUNT_BLOCKED_*, and the texts of MegaApiImpl::whyamiblocked_result).
BLOCK_REASONS: dict[int, str] = {
    200: "suspended for copyright violations; see the account's email",
    300: "terminated for a breach of MEGA's terms of service",
    400: "disabled by its business account administrator",
    401: "removed by its business account administrator",
    500: "blocked until it is verified by SMS",
    700: "temporarily suspended: verify its email address and follow the steps MEGA sent",
}
BLOCKED_UNKNOWN = "MEGA did not say why"


def block_reason(code: int | None) -> str:
    """The reason for a 'whyamiblocked' code (None: it could not be asked)."""
    if code is None:
        return BLOCKED_UNKNOWN
    return BLOCK_REASONS.get(code, BLOCK_REASONS[300] if code > 0 else BLOCKED_UNKNOWN)


def http_failure(status: int) -> Failure:
    """What an unexpected HTTP status of the API means.

    MEGA's clients try every one of them again: the SDK resends the request after its
    backoff whatever the status (``MegaClient::exec``: 500 "servers busy", anything else
    "unknown", a 402 without ``X-Hashcash`` too), and the web client reads any status but
    200 as a rate limit (``MEGAPIRequest.finish`` in ``js/utils/api.js``).
    """
    if status == 429:
        return RATE_LIMITED
    return SERVER_ERROR


def upload_http_failure(status: int) -> Failure:
    """What an HTTP status of the upload server means, as the SDK reads it
    (``TransferSlot::processRequestFailure`` in ``src/transferslot.cpp``): 403 and 404 a
    dead upload URL, 509 the transfer quota, 429 and 503 a wait before the same piece
    again, anything else the same piece again after the backoff."""
    if status in (403, 404):
        return UPLOAD_URL_DEAD
    if status == 429:
        return UPLOAD_SLOW_DOWN
    if status == 503:
        return UPLOAD_BUSY
    if status == 509:
        return TRANSFER_QUOTA
    return SERVER_ERROR


# -- the failures ---------------------------------------------------------------


class MegaError(Exception):
    """Base of every failure raised by the MEGA client; ``str()`` is safe to log."""

    failure: Failure = UNEXPECTED
    name: str = "MEGA_ERROR"


class MegaApiError(MegaError):
    """MEGA answered a command, or a whole request (``whole_request``), with an error code."""

    def __init__(self, code: int, *, whole_request: bool = False) -> None:
        self.code = code
        self.whole_request = whole_request
        self.name = code_name(code)
        self.failure = API_CODES.get(code, REJECTED)
        super().__init__(f"MEGA answered {self.name} ({code})")


class MegaChunkError(MegaApiError):
    """The upload server answered a piece's POST with an error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.failure = UPLOAD_CODES.get(code, REJECTED)


class StreamCannotRestart(MegaError):
    """MEGA wants the upload started again on a fresh URL, but the body was streamed from
    the client as it arrived and the part already sent is no longer held."""

    failure = STREAM_RESTART
    name = "stream_restart"

    def __init__(self, cause: MegaError) -> None:
        self.cause = cause
        super().__init__(f"MEGA asked to restart a streamed upload ({cause.name})")


class MegaLoginError(MegaError):
    """MEGA refused to log in (wrong credentials, blocked account, two-factor code missing
    or wrong), or a recent refusal is still cooling down. ``code`` is MEGA's code."""

    failure = LOGIN_REFUSED

    def __init__(self, code: int, *, cooling_down: bool = False, mfa_sent: bool = False) -> None:
        self.code = code
        self.cooling_down = cooling_down
        self.name = code_name(code)
        reason = LOGIN_REASONS.get(code, f"MEGA answered {self.name}")
        if code == EMFAREQUIRED and mfa_sent:
            reason = "the two-factor code was refused (check MEGA_TOTP_SECRET and the clock)"
        self.reason = reason
        suffix = " (not retrying yet)" if cooling_down else ""
        super().__init__(f"MEGA login failed: {reason}{suffix}")


class MegaAccountBlocked(MegaError):
    """MEGA blocked the account (-16): a state of the account, as the SDK keeps it
    (``MegaClient::block``), not a refused password; it may be lifted."""

    failure = ACCOUNT_BLOCKED
    name = "account_blocked"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(ACCOUNT_BLOCKED.message.format(name=reason))


class MegaLoggingIn(MegaError):
    """A log-in (with its proof of work) is running elsewhere and did not end in time."""

    failure = LOGGING_IN
    name = "logging_in"

    def __init__(self) -> None:
        super().__init__("the service is logging in to MEGA")


class MegaHttpError(MegaError):
    """An answer with an unexpected HTTP status, from the API or (``upload``) from the
    upload server (5xx, 429, 403 on an upload URL ...)."""

    def __init__(self, status: int, *, upload: bool = False) -> None:
        self.status = status
        self.name = f"HTTP_{status}"
        self.failure = upload_http_failure(status) if upload else http_failure(status)
        super().__init__(f"MEGA answered HTTP {status}")


class MegaTransportError(MegaError):
    """The connection failed or timed out. Raised *instead of* the requests exception,
    whose text contains the request URL and with it the session id."""

    def __init__(self, timed_out: bool) -> None:
        self.timed_out = timed_out
        self.name = "timeout" if timed_out else "connection"
        self.failure = TIMEOUT if timed_out else CONNECTION
        super().__init__(self.failure.message)


class MegaBadAnswer(MegaError):
    """MEGA's answer could not be parsed."""

    failure = BAD_ANSWER
    name = "bad_answer"

    def __init__(self) -> None:
        super().__init__(BAD_ANSWER.message)


class MegaBadUploadAnswer(MegaError):
    """The upload server answered a piece with something that is neither an
    acknowledgement, a token nor an error code. The web client starts the upload again on a
    fresh URL (``onXHRready`` in ``js/transfers/upload2.js``: "$FATAL", ``ulmanager.restart``)."""

    failure = UPLOAD_RESTART
    name = "bad_upload_answer"

    def __init__(self) -> None:
        super().__init__("MEGA's upload server sent an answer that could not be read")


class InsecureUploadUrl(MegaError):
    """An ``http://`` upload URL while the API itself is ``https://``."""

    failure = INSECURE_UPLOAD_URL
    name = "insecure_upload_url"

    def __init__(self) -> None:
        super().__init__(INSECURE_UPLOAD_URL.message)


class MegaRetriesExhausted(MegaError):
    """A retryable failure kept happening until the attempts ran out."""

    failure = EXHAUSTED
    name = "exhausted"

    def __init__(self, attempts: int, last: BaseException) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(
            f"MEGA kept failing after {attempts} attempts (last: {failure_name(last)})"
        )


class MegaDeadlineExceeded(MegaError):
    """Retrying went on until the total deadline."""

    failure = DEADLINE
    name = "deadline"

    def __init__(self, attempts: int, deadline_s: float, last: BaseException | None) -> None:
        self.attempts = attempts
        self.deadline_s = deadline_s
        self.last = last
        super().__init__(f"MEGA did not succeed within {deadline_s:g} s ({attempts} attempts)")


class HashcashUnsolved(MegaError):
    """MEGA's proof-of-work challenge could not be solved before its deadline, or was malformed."""

    failure = HASHCASH
    name = "hashcash"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(HASHCASH.message)


class LoginLockTimeout(MegaError):
    """Another process held the log-in lock for too long."""

    failure = LOGIN_LOCK
    name = "login_lock"

    def __init__(self) -> None:
        super().__init__(LOGIN_LOCK.message)


class FolderLockTimeout(MegaError):
    """Another process held the folder-creation lock for too long."""

    failure = FOLDER_LOCK
    name = "folder_lock"

    def __init__(self) -> None:
        super().__init__(FOLDER_LOCK.message)


def failure_name(exc: BaseException) -> str:
    """A short name for logs: MEGA's code name, or the failure's kind."""
    if isinstance(exc, MegaError):
        return exc.name
    return type(exc).__name__


def failure_of(exc: BaseException) -> Failure:
    return exc.failure if isinstance(exc, MegaError) else UNEXPECTED


def action_for(exc: BaseException) -> Action:
    """What to do about ``exc``: the retry predicates of the client and upload path use this."""
    return failure_of(exc).action


def is_retryable(exc: BaseException) -> bool:
    return action_for(exc) is Action.RETRY


def to_storage_error(exc: BaseException) -> StorageError:
    """The storage domain error (with a client-safe message) for a MEGA failure."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, MegaRetriesExhausted):
        # Out of attempts on timeouts is a timeout, and on connection errors MEGA is out
        # of reach (503, worth trying later), not a rejection.
        last = failure_of(exc.last)
        if last is TIMEOUT:
            return StorageTimeout(f"MEGA did not answer in time after {exc.attempts} attempts")
        if last is CONNECTION:
            return StorageUnavailable(f"could not connect to MEGA after {exc.attempts} attempts")
        return EXHAUSTED.error(EXHAUSTED.message.format(name=exc.attempts))
    if isinstance(exc, MegaDeadlineExceeded):
        return DEADLINE.error(DEADLINE.message.format(name=f"{exc.deadline_s:g}"))
    if isinstance(exc, MegaLoginError):
        return LOGIN_REFUSED.error(LOGIN_REFUSED.message.format(name=exc.reason))
    if isinstance(exc, MegaAccountBlocked):
        return ACCOUNT_BLOCKED.error(str(exc))
    failure = failure_of(exc)
    shown = exc.name if isinstance(exc, MegaError) else "unexpected error"
    return failure.error(failure.message.format(name=shown))


def failed(exc: BaseException, what: str) -> StorageError:
    """``to_storage_error`` for a failed upload step, logged with only the failure's kind
    (exception texts may carry URLs with the session id), unless it is a state the client
    logged once already (a blocked account)."""
    failure = to_storage_error(exc)
    if not failure.reported:
        logger.warning("MEGA %s failed: %s (%s)", what, failure_name(exc), failure)
    return failure
