"""The MEGA API client: mega.py's ``Mega`` with our transport, retries, log-in and session cache.

mega.py builds its own API URL, opens a new connection per request and retries EAGAIN
forever. ``MegaClient`` keeps mega.py's log-in cryptography and node helpers (``find``,
``create_folder``, ``export``, ``destroy`` ...) and replaces ``_api_request``, through
which all of them talk to MEGA, with a bounded one:

* one pooled ``requests.Session`` (``http``) to ``api_url + "/cs"``, connect and read
  timeouts, the retry policy of ``retry.py``, the decisions of the table in ``errors.py``;
* HTTP 402 + ``X-Hashcash`` answered with a solved proof of work;
* ESID: log in again (once; other threads and processes reuse that log-in) and repeat
  the call once;
* a lazy log-in under a thread lock and a cross-process file lock, with the session
  cached in a private file so that worker processes and restarts share one log-in, and a
  cool-down after MEGA refused the credentials so that probes cannot hammer it.

Nothing here logs or raises a password, session id or key.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests
from mega import Mega
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from . import hashcash
from .errors import (
    EBLOCKED,
    ENOENT,
    Action,
    HashcashUnsolved,
    MegaApiError,
    MegaBadAnswer,
    MegaDeadlineExceeded,
    MegaError,
    MegaHttpError,
    MegaLoginError,
    MegaTransportError,
    action_for,
    to_storage_error,
)
from .retry import Deadline, RetryPolicy, call_with_retries
from .session import CachedSession, SessionStore, account_key

logger = logging.getLogger(__name__)

# Commands that log in; they run without a session and never trigger a log-in themselves.
LOGIN_COMMANDS = frozenset({"us0", "us"})
# A request may be challenged again after an answer (a new token); this many times at most.
MAX_CHALLENGES = 3
_SID_IN_URL = re.compile(r"(sid=)[^&\s\"]+")


class _RedactSid(logging.Filter):
    """urllib3 logs request lines with their query string at DEBUG; MEGA's is ``?sid=``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "sid=" in record.getMessage():
            record.msg = _SID_IN_URL.sub(r"\1<redacted>", record.getMessage())
            record.args = ()
        return True


def _install_sid_redaction() -> None:
    target = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RedactSid) for f in target.filters):
        target.addFilter(_RedactSid())


def _command_names(commands: list[Any]) -> str:
    names = [str(c.get("a", "?")) if isinstance(c, dict) else "?" for c in commands]
    return ",".join(names)[:60]


class MegaClient(Mega):
    """A MEGA session for one account, safe to share between threads."""

    def __init__(
        self,
        api_url: str,
        email: str,
        password: str,
        session_file: Path,
        *,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        policy: RetryPolicy | None = None,
        login_cooldown_s: float = 60.0,
        hashcash_deadline_s: float = 60.0,
        hashcash_threads: int | None = None,
        pool_size: int = 16,
    ) -> None:
        super().__init__()
        _install_sid_redaction()
        self.api_url = api_url.rstrip("/")
        self._cs_url = self.api_url + "/cs"
        self._email = email.strip().lower()
        self._password = SecretStr(password)  # no repr, traceback or log shows it
        self.policy = policy or RetryPolicy()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # mega.py's own download helpers pass self.timeout to requests.
        self.timeout = (connect_timeout, read_timeout)
        self._login_cooldown_s = login_cooldown_s
        self._hashcash_deadline_s = hashcash_deadline_s
        self._hashcash_threads = hashcash_threads
        # Long enough for another process's whole log-in, including a proof of work.
        self._lock_timeout_s = 2 * self.policy.deadline_s + hashcash_deadline_s

        self.http = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.http.mount("https://", adapter)
        self.http.mount("http://", adapter)
        self.http.headers["User-Agent"] = "paimon-server"

        self._store = SessionStore(Path(session_file), account_key(self._email, self.api_url))
        self._lock = threading.RLock()
        # The deadline of the api() call running in this thread, for _request (mega.py's
        # helpers reach _api_request without one).
        self._call_deadline = threading.local()
        self._sequence = itertools.count(self.sequence_num)
        self._master_key: list[int] | None = None
        self._user_handle: str | None = None
        self._refused: tuple[float, MegaLoginError] | None = None
        self.login_count = 0  # successful log-ins by this instance
        self.login_attempts = 0
        self.last_login_error: str | None = None

    def __repr__(self) -> str:
        return f"MegaClient(api_url={self.api_url!r}, logged_in={self.logged_in})"

    # -- public interface ------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self.sid is not None

    @property
    def master_key(self) -> list[int]:
        """The account's master key as four 32-bit words (logs in if needed)."""
        if self._master_key is None:
            self.ensure_login()
        assert self._master_key is not None
        return self._master_key

    @master_key.setter
    def master_key(self, value: Any) -> None:  # mega.py's _login_process assigns it
        self._master_key = [int(word) for word in value]

    @property
    def user_handle(self) -> str:
        if self._user_handle is None:
            self._user_handle = str(self.api({"a": "ug"})["u"])
        return self._user_handle

    def api(self, command: dict[str, Any], deadline_s: float | None = None) -> Any:
        """Send one command and return its result. Retries, re-login and proof of work
        happen inside; failures raise a ``MegaError`` (``to_storage_error`` maps them).

        ``deadline_s`` bounds the whole call (retries, waits and each request's timeouts)
        when it is nearer than the retry policy's own deadline: an upload passes what is
        left of its total time, and the call ends with ``MegaDeadlineExceeded`` then.
        """
        if deadline_s is None:
            return self._api_request(command)
        if deadline_s <= 0:
            raise MegaDeadlineExceeded(0, deadline_s, None)
        self._call_deadline.value = deadline_s
        try:
            return self._api_request(command)
        finally:
            self._call_deadline.value = self._call_deadline.ends = None

    def ensure_login(self) -> None:
        """Have a session: the one in memory, the cached one, or a fresh log-in."""
        if self.sid is not None:
            return
        with self._lock:
            if self.sid is not None:
                return
            self._get_session(stale_sid=None)

    def close(self) -> None:
        self.http.close()

    # -- mega.py hooks ---------------------------------------------------------------

    def _api_request(self, data: Any) -> Any:
        commands = data if isinstance(data, list) else [data]
        if any(isinstance(c, dict) and c.get("a") in LOGIN_COMMANDS for c in commands):
            return self._request(commands, sid=None)
        sid = self._current_sid()
        try:
            return self._request(commands, sid)
        except MegaApiError as exc:
            if action_for(exc) is not Action.RELOGIN:
                raise
        logger.info("MEGA rejected the session; logging in again")
        self._relogin(stale_sid=sid)
        return self._request(commands, self._current_sid())

    def _login_process(self, resp: Any, password: Any) -> None:
        super()._login_process(resp, password)
        user = resp.get("u") if isinstance(resp, dict) else None
        self._user_handle = user if isinstance(user, str) else None

    # -- transport ---------------------------------------------------------------------

    def _current_sid(self) -> str:
        sid = self.sid
        if sid is not None:
            return sid
        with self._lock:
            self.ensure_login()
            assert self.sid is not None
            return self.sid

    def _request(self, commands: list[Any], sid: str | None) -> Any:
        """One logical request: same id through retries and proof-of-work resends, so MEGA
        can recognise a repeat of a request it already carried out."""
        params: dict[str, Any] = {"id": next(self._sequence)}
        if sid:
            params["sid"] = sid
        body = json.dumps(commands, separators=(",", ":"))
        policy = self.policy
        limit: float | None = getattr(self._call_deadline, "value", None)
        if limit is not None:
            # Set on the first request of an api() call; a re-login's repeat gets what is left.
            self._call_deadline.value = None
            self._call_deadline.ends = time.monotonic() + limit
        ends: float | None = getattr(self._call_deadline, "ends", None)
        if ends is not None:
            left = ends - time.monotonic()
            if left <= 0:
                raise MegaDeadlineExceeded(0, policy.deadline_s, None)
            if left < policy.deadline_s:
                policy = replace(policy, deadline_s=left)
        deadline = Deadline(policy.deadline_s)
        return call_with_retries(
            lambda: self._exchange(params, body, deadline),
            policy,
            what=f"MEGA API call {_command_names(commands)}",
        )

    def _exchange(self, params: dict[str, Any], body: str, deadline: Deadline) -> Any:
        headers = {"Content-Type": "application/json"}
        for _ in range(MAX_CHALLENGES + 1):
            response = self._post(params, body, headers, deadline)
            challenge = response.headers.get("X-Hashcash")
            if response.status_code != 402 or not challenge:
                break
            logger.info("MEGA asked for a proof of work; solving it")
            started = time.monotonic()
            headers["X-Hashcash"] = hashcash.solve(
                challenge, self._hashcash_deadline_s, self._hashcash_threads
            )
            logger.info("proof of work solved in %.2f s", time.monotonic() - started)
        else:
            raise HashcashUnsolved("challenged repeatedly")
        if response.status_code != 200:
            raise MegaHttpError(response.status_code)
        return _result(response.content)

    def _post(
        self, params: dict[str, Any], body: str, headers: dict[str, str], deadline: Deadline
    ) -> requests.Response:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise MegaTransportError("timeout")
        # Each request ends by the deadline: both timeouts are cut to what is left of it.
        read_timeout = max(0.05, min(self._read_timeout, remaining))
        connect_timeout = max(0.05, min(self._connect_timeout, remaining))
        try:
            return self.http.post(
                self._cs_url,
                params=params,
                data=body,
                headers=headers,
                timeout=(connect_timeout, read_timeout),
            )
        # "from None": the requests exception's text holds the URL, and with it the sid.
        except requests.Timeout:
            raise MegaTransportError("timeout") from None
        except requests.RequestException:
            raise MegaTransportError("connection") from None

    # -- log-in and session cache -------------------------------------------------------

    def _relogin(self, stale_sid: str) -> None:
        with self._lock:
            if self.sid is not None and self.sid != stale_sid:
                return  # another thread already logged in again
            self.sid = None
            self._get_session(stale_sid=stale_sid)

    def _get_session(self, stale_sid: str | None) -> None:
        """Under self._lock: adopt another process's session from the cache, or log in."""
        self._check_cooldown()
        with self._store.locked(self._lock_timeout_s):
            cached = self._store.load()
            if cached is not None and cached.sid != stale_sid:
                self._adopt(cached)
                return
            self._log_in()

    def _check_cooldown(self) -> None:
        if self._refused is None:
            return
        refused_at, failure = self._refused
        if time.monotonic() - refused_at < self._login_cooldown_s:
            raise MegaLoginError(failure.code, cooling_down=True)
        self._refused = None

    def _adopt(self, cached: CachedSession) -> None:
        self._master_key = list(cached.master_key)
        self._user_handle = cached.user_handle
        self.sid = cached.sid
        logger.info("MEGA session loaded from the cache")

    def _log_in(self) -> None:
        self.login_attempts += 1
        logger.info("logging in to MEGA")
        try:
            # mega.py's log-in without its login(), which would also fetch every node.
            self._login_user(self._email, self._password.get_secret_value())
            if self.sid is None or self._master_key is None:
                raise MegaBadAnswer()
        except MegaApiError as exc:
            self.sid = None
            if exc.code in (ENOENT, EBLOCKED):
                failure = MegaLoginError(exc.code)
                self._refused = (time.monotonic(), failure)
                self.last_login_error = str(failure)
                logger.warning("%s; not trying again for %g s", failure, self._login_cooldown_s)
                raise failure from None
            self.last_login_error = str(to_storage_error(exc))
            raise
        except MegaError as exc:
            self.sid = None
            self.last_login_error = str(to_storage_error(exc))
            raise
        except (KeyError, ValueError, TypeError, IndexError):
            # mega.py could not decode the answer; its text may hold key material.
            self.sid = None
            failure = MegaBadAnswer()
            self.last_login_error = str(failure)
            raise failure from None
        self.login_count += 1
        self.last_login_error = None
        logger.info("logged in to MEGA")
        try:
            self._store.save(CachedSession(self.sid, list(self._master_key), self._user_handle))
        except OSError as exc:
            # Still usable; only the sharing with other processes is lost.
            logger.warning("could not write the MEGA session cache (%s)", type(exc).__name__)


def _result(content: bytes) -> Any:
    """The first command's result, as mega.py's callers expect; errors raise MegaApiError."""
    try:
        answer = json.loads(content)
    except ValueError:
        raise MegaBadAnswer() from None
    if isinstance(answer, bool):
        raise MegaBadAnswer()
    if isinstance(answer, int):  # a request-level error code (or 0)
        if answer < 0:
            raise MegaApiError(answer)
        return answer
    if not isinstance(answer, list) or not answer:
        raise MegaBadAnswer()
    first = answer[0]
    if isinstance(first, int) and not isinstance(first, bool) and first < 0:
        raise MegaApiError(first)
    return first
