"""The MEGA API client: our transport, session and log-in, on mega.py's crypto primitives.

``MegaClient`` owns everything that talks to MEGA over HTTP:

* one pooled ``requests.Session`` for API posts (``api``) and upload-region posts
  (``post_region``), with one place for timeouts and exception wrapping;
* one ``Deadline`` passed explicitly into every call, the retry policy of ``retry.py`` and
  the decisions of the catalogue in ``errors.py``;
* MEGA's answers read as its own clients read them: a request-level code, a per-command
  code, or a per-command ``{"err": N}`` object (``src/command.cpp``, ``Command::checkError``
  in the SDK; ``js/utils/api.js`` in the web client) are all errors;
* request ids as the SDK keeps them: the same id only for a resend of a request MEGA did
  not answer, a new one after any answer (MEGA replays answers by id);
* a blocked account (-16) kept as the account's state, with MEGA's reason, until a look
  finds it lifted (``MegaClient::block`` and ``whyamiblocked`` in the SDK);
* HTTP 402 + ``X-Hashcash`` answered with a proof of work; when its budget runs out the
  request goes again with an empty answer for a fresh challenge (``hashcash.py``);
* ESID: log in again (once; other threads and processes reuse that log-in) and repeat
  the call once;
* the log-in itself (``us0`` and its ``v``, key derivation for any password, ``us`` with
  ``mfa`` for two-factor accounts, the session id decrypted with the account's RSA key at
  its full width) built from mega.py's primitives,
  under a bounded thread lock and the session store's cross-process lock, with a cool-down
  after MEGA refused the credentials so that probes cannot hammer it.

Nothing here logs or raises a password, TOTP secret, session id or key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import requests
from mega.crypto import (
    a32_to_str,
    base64_to_a32,
    base64_url_decode,
    base64_url_encode,
    decrypt_key,
    encrypt_key,
    make_id,
    mpi_to_int,
    prepare_key,
    str_to_a32,
    stringhash,
)
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from app import metrics
from app.config import MEGA_DEFAULTS, MegaSettings

from . import hashcash
from .errors import (
    EAGAIN,
    EBLOCKED,
    ERATELIMIT,
    LOGIN_REASONS,
    SESSION_GONE,
    HashcashUnsolved,
    MegaAccountBlocked,
    MegaApiError,
    MegaBadAnswer,
    MegaError,
    MegaHttpError,
    MegaLoggingIn,
    MegaLoginError,
    MegaTransportError,
    block_reason,
    failure_name,
)
from .retry import Deadline, RetryPolicy, call_with_retries
from .session import (
    CachedSession,
    FileSessionStore,
    MemorySessionStore,
    SessionStore,
    account_key,
    decode_session,
    encode_session,
)
from .settings import retry_policy
from .totp import totp

logger = logging.getLogger(__name__)

# A request answered with a fresh challenge right after a correct answer, this many times
# in a row, is given up (a server that never accepts would otherwise loop until the deadline).
MAX_REJECTED_ANSWERS = 3
# After MEGA refused the credentials, no new log-in for this long (probes, uploads).
LOGIN_COOLDOWN_S = 60.0
# While MEGA blocks the account, whether the block was lifted is asked this often.
BLOCKED_RECHECK_S = 60.0
_SID_IN_URL = re.compile(r"(sid=)[^&\s\"]+")
MEGA_NZ, MEGA_APP = "https://mega.nz", "https://mega.app"  # the SDK's MEGAURL_NZ, _APP


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


class MegaClient:
    """A MEGA session for one account, safe to share between threads."""

    def __init__(
        self,
        api_url: str,
        email: str,
        password: str,
        session_file: Path | None = None,
        *,
        policy: RetryPolicy,
        store: SessionStore | None = None,
        totp_secret: str | None = None,
        session: str | None = None,
        connect_timeout: float = MEGA_DEFAULTS.connect_timeout,
        read_timeout: float = MEGA_DEFAULTS.read_timeout,
        login_cooldown_s: float = LOGIN_COOLDOWN_S,
        login_deadline_s: float = MEGA_DEFAULTS.login_deadline_seconds,
        login_wait_s: float = MEGA_DEFAULTS.login_wait_seconds,
        blocked_recheck_s: float = BLOCKED_RECHECK_S,
        hashcash_budget_s: float = hashcash.CHALLENGE_BUDGET_S,
        hashcash_threads: int | None = None,
        pool_size: int = 16,
    ) -> None:
        _install_sid_redaction()
        self.api_url = api_url.rstrip("/")
        self._cs_url = self.api_url + "/cs"
        self._email = email.strip().lower()
        self._password = SecretStr(password)  # no repr, traceback or log shows it
        self._totp_secret = SecretStr(totp_secret) if totp_secret else None
        self.policy = policy
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._login_cooldown_s = login_cooldown_s
        self._login_deadline_s = login_deadline_s
        self._login_wait_s = login_wait_s
        self._blocked_recheck_s = blocked_recheck_s
        # While MEGA blocks the account: (why, time.monotonic() of the next look).
        self._blocked: tuple[str, float] | None = None
        self._blocked_lock = threading.Lock()
        self._hashcash_budget_s = hashcash_budget_s
        self._hashcash_threads = hashcash_threads
        # Long enough for another process's whole log-in, including a proof of work.
        self._lock_timeout_s = login_deadline_s + 2 * policy.deadline_s

        self._http = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)
        self._http.headers["User-Agent"] = "paimon-server"

        self.account = account_key(self._email, self.api_url)
        if store is None:
            store = FileSessionStore(Path(session_file), self.account) if session_file else None
        self._store: SessionStore = store or MemorySessionStore()
        self._given = decode_session(session, self.account) if session else None
        if session and self._given is None:
            logger.warning("MEGA_SESSION was made for another account or is damaged; ignoring it")
        self._lock = threading.Lock()
        self._sequence = itertools.count(secrets.randbelow(0xFFFFFFFF))
        self._sid: str | None = None
        self._master_key: list[int] | None = None
        self._user_handle: str | None = None
        self._link_base: str | None = None
        self._refused: tuple[float, MegaLoginError] | None = None
        # The client's session tag, 'i' in the commands that change nodes: MEGA's action
        # packets carry it back, so a client tells its own changes from others' (the SDK's
        # sessionid, made once per MegaClient; JSONWriter::notself in src/json.cpp).
        # Resent requests are recognised by their request id, not by this.
        self.session_tag = make_id(10)

    @classmethod
    def from_settings(
        cls, mega: MegaSettings, store: SessionStore | None = None, pool_size: int = 16
    ) -> MegaClient:
        """The production client; ``store`` defaults to the file ``mega.session_file``."""
        assert mega.email is not None and mega.password is not None  # checked at start-up
        return cls(
            mega.api_url,
            mega.email,
            mega.password.get_secret_value(),
            mega.session_file,
            policy=retry_policy(mega),
            store=store,
            totp_secret=mega.totp_secret.get_secret_value() if mega.totp_secret else None,
            session=mega.session.get_secret_value() if mega.session else None,
            connect_timeout=mega.connect_timeout,
            read_timeout=mega.read_timeout,
            login_deadline_s=mega.login_deadline_seconds,
            login_wait_s=mega.login_wait_seconds,
            pool_size=pool_size,
        )

    def __repr__(self) -> str:
        return f"MegaClient(api_url={self.api_url!r}, logged_in={self.logged_in})"

    # -- public interface ------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._sid is not None

    @property
    def login_running(self) -> bool:
        """Whether a thread of this process is getting a session right now."""
        return self._lock.locked()

    @property
    def secure(self) -> bool:
        """Whether the API is reached over https (then upload data must be too)."""
        return self.api_url.startswith("https://")

    @property
    def master_key(self) -> list[int]:
        """The account's master key as four 32-bit words (logs in if needed)."""
        if self._master_key is None:
            self.ensure_login()
        assert self._master_key is not None
        return self._master_key

    @property
    def user_handle(self) -> str:
        if self._user_handle is None:
            self._account_details()
        assert self._user_handle is not None
        return self._user_handle

    @property
    def link_base(self) -> str:
        """Where public file links point: ``https://mega.app/file/`` when the account's
        "site" feature flag is 1, else ``https://mega.nz/file/``, as the SDK chooses
        (``MegaClient::readmiscflags`` in ``src/megaclient.cpp``; the flags come with
        'ug', ``CommandGetUserData``). Asked once per session."""
        if self._link_base is None:
            self._account_details()
        assert self._link_base is not None
        return self._link_base

    def _account_details(self) -> None:
        answer = self.api({"a": "ug"})
        if not isinstance(answer, dict) or not isinstance(answer.get("u"), str):
            raise MegaBadAnswer()
        self._user_handle = answer["u"]
        flags = answer.get("flags")
        site = flags.get("ff_site") if isinstance(flags, dict) else None
        self._link_base = f"{MEGA_APP if site == 1 else MEGA_NZ}/file/"

    def api(self, command: dict[str, Any], deadline: Deadline | None = None) -> Any:
        """Send one command and return its result. Retries, re-login and proof of work
        happen inside; failures raise a ``MegaError`` (``to_storage_error`` maps them).

        ``deadline`` bounds the whole call (retries, waits and each request's timeouts)
        when it is nearer than the retry policy's own deadline for one call.
        """
        deadline = Deadline(self.policy.deadline_s) if deadline is None else deadline
        deadline = deadline.sooner(self.policy.deadline_s)
        deadline.check()
        self._check_blocked(deadline)
        sid = self._current_sid(deadline)
        try:
            return self._command(command, sid, deadline)
        except MegaApiError as exc:
            if exc.failure is not SESSION_GONE:
                raise
        logger.info("MEGA rejected the session; logging in again")
        self._relogin(stale_sid=sid, deadline=deadline)
        return self._command(command, self._current_sid(deadline), deadline)

    def _command(self, command: dict[str, Any], sid: str, deadline: Deadline) -> Any:
        """One command in the session ``sid``; -16 marks the account blocked."""
        try:
            return self._request(command, sid, deadline)
        except MegaApiError as exc:
            if exc.code == EBLOCKED:
                raise self._block(sid, deadline) from None
            raise

    def post_region(self, url: str, body: memoryview | bytes, deadline: Deadline) -> bytes:
        """POST one piece of an upload to ``url`` (upload URL + offset); the answer's bytes
        (a completion token may be binary: never decoded as text here)."""
        response = self._post(
            url,
            deadline,
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code != 200:
            raise MegaHttpError(response.status_code, upload=True)
        return response.content

    def ensure_login(self, deadline: Deadline | None = None) -> None:
        """Have a session: the one in memory, a stored one, ``MEGA_SESSION``, or a fresh
        log-in. While another thread is logging in, wait at most ``login_wait_s``, then
        raise ``MegaLoggingIn`` (the caller answers "try again shortly"). While MEGA
        blocks the account, raise ``MegaAccountBlocked``."""
        self._check_blocked(self._login_deadline(deadline))
        if self._sid is not None:
            return
        if not self._lock.acquire(timeout=self._login_wait_s):
            raise MegaLoggingIn()
        try:
            if self._sid is None:
                self._get_session(None, self._login_deadline(deadline))
        finally:
            self._lock.release()

    def export_session(self) -> str:
        """The current session as one ``MEGA_SESSION`` line (a credential: keep it secret)."""
        self.ensure_login()
        assert self._sid is not None and self._master_key is not None
        session = CachedSession(self._sid, list(self._master_key), self._user_handle)
        return encode_session(session, self.account)

    def close(self) -> None:
        self._http.close()

    # -- transport ---------------------------------------------------------------------

    def _login_deadline(self, deadline: Deadline | None) -> Deadline:
        own = Deadline(self._login_deadline_s)
        return own if deadline is None else deadline.sooner(self._login_deadline_s)

    def _current_sid(self, deadline: Deadline) -> str:
        sid = self._sid
        if sid is None:
            self.ensure_login(deadline)
            sid = self._sid
        assert sid is not None
        return sid

    def _request(self, command: dict[str, Any], sid: str | None, deadline: Deadline) -> Any:
        """One command, tried again under the retry policy.

        MEGA answers a request id it has seen before from its cache ("server API is
        idempotent", the SDK's ``RequestDispatcher`` in ``src/request.cpp``). So the same
        id goes out again only where MEGA did not answer the request: a transport failure,
        an HTTP error, a proof-of-work challenge, or a bare -3/-4 for the whole request
        (``MegaClient::exec`` in ``src/megaclient.cpp`` resends ``inflightreq`` unchanged
        then). After any complete answer, error codes in it included, the next try is a
        new request with the next id, or it would only get the same answer back.
        """
        params: dict[str, Any] = {"id": next(self._sequence)}
        if sid:
            params["sid"] = sid
        body = json.dumps([command], separators=(",", ":"))
        name = str(command.get("a", "?"))[:20]

        def attempt() -> Any:
            try:
                return self._exchange(params, body, deadline)
            except MegaApiError as exc:
                if not (exc.whole_request and exc.code in (EAGAIN, ERATELIMIT)):
                    params["id"] = next(self._sequence)
                raise

        try:
            answer = call_with_retries(
                attempt,
                self.policy,
                deadline,
                what=f"MEGA API call {name}",
            )
        except Exception as exc:
            metrics.mega_request(name, failure_name(exc))
            raise
        metrics.mega_request(name, "ok")
        return answer

    def _exchange(self, params: dict[str, Any], body: str, deadline: Deadline) -> Any:
        headers = {"Content-Type": "application/json"}
        rejected = 0
        while True:
            response = self._post(self._cs_url, deadline, params=params, data=body, headers=headers)
            challenge = response.headers.get("X-Hashcash")
            if response.status_code != 402 or not challenge:
                break
            answered = headers.get("X-Hashcash")
            if answered is not None and not answered.endswith(":"):
                rejected += 1  # a solved answer, yet challenged again
                if rejected >= MAX_REJECTED_ANSWERS:
                    raise HashcashUnsolved("challenged repeatedly")
            if deadline.remaining() <= 0:
                raise HashcashUnsolved("deadline")
            budget = min(self._hashcash_budget_s, deadline.remaining())
            logger.info(
                "MEGA asked for a proof of work (%s); solving it, at most %.0f s on this challenge",
                hashcash.describe(challenge, self._hashcash_threads),
                budget,
            )
            started = time.monotonic()
            headers["X-Hashcash"] = hashcash.solve(challenge, budget, self._hashcash_threads)
            spent = time.monotonic() - started
            metrics.mega_proof_of_work(spent)
            if headers["X-Hashcash"].endswith(":"):
                if deadline.remaining() <= 0:
                    raise HashcashUnsolved("deadline")
                logger.info(
                    "proof of work unsolved after %.1f s; asking for a fresh challenge", spent
                )
            else:
                logger.info("proof of work solved in %.2f s", spent)
        if response.status_code != 200:
            raise MegaHttpError(response.status_code)
        return _result(response.content)

    def _post(self, url: str, deadline: Deadline, **kwargs: Any) -> requests.Response:
        """The one place HTTP happens: timeouts cut to the deadline, exceptions wrapped."""
        deadline.check()
        timeout = deadline.timeouts(self._connect_timeout, self._read_timeout)
        try:
            return self._http.post(url, timeout=timeout, **kwargs)
        # "from None": the requests exception's text holds the URL, and with it the sid
        # (API) or the upload token (upload server).
        except requests.Timeout:
            raise MegaTransportError(timed_out=True) from None
        except requests.RequestException:
            raise MegaTransportError(timed_out=False) from None

    # -- a blocked account ------------------------------------------------------------------

    def _block(self, sid: str | None, deadline: Deadline) -> MegaAccountBlocked:
        """MEGA answered -16: the account is blocked. The SDK keeps that as the account's
        state and asks why (``MegaClient::block``, then ``whyamiblocked``; -16 while
        logged in, in ``MegaClient::exec``); so does this, saying so once in the log. Until
        the next look (``blocked_recheck_s``) every call fails at once, without a request."""
        code = self._why_blocked(sid, deadline) if sid else None
        reason = block_reason(code or None)
        with self._blocked_lock:
            first = self._blocked is None
            self._blocked = (reason, time.monotonic() + self._blocked_recheck_s)
        if first:
            metrics.mega_account_blocked(True)
            logger.error(
                "MEGA blocked the account (%s); uploads get 503 until MEGA lifts the block. "
                "Looking again every %g s",
                reason,
                self._blocked_recheck_s,
            )
        return MegaAccountBlocked(reason)

    def _why_blocked(self, sid: str, deadline: Deadline) -> int | None:
        """What 'whyamiblocked' answers: 0 not blocked, else the reason's code; None when
        it could not be asked."""
        # Alone in its request, as the SDK sends it (batchSeparately), so that the block
        # itself does not refuse the question.
        try:
            answer = self._request({"a": "whyamiblocked"}, sid, deadline)
        except MegaError:
            return None
        return answer if isinstance(answer, int) and not isinstance(answer, bool) else None

    def _check_blocked(self, deadline: Deadline) -> None:
        """Raise ``MegaAccountBlocked`` while the account is known to be blocked; when a
        look is due, look: ask MEGA why with the session (the block is lifted on 0), or,
        without one, let the log-in that follows tell."""
        if self._blocked is None:
            return
        with self._blocked_lock:
            if self._blocked is None:
                return
            reason, next_look = self._blocked
            if time.monotonic() < next_look:
                raise MegaAccountBlocked(reason)
            # One caller looks; the others keep failing at once meanwhile.
            self._blocked = (reason, time.monotonic() + self._blocked_recheck_s)
        sid = self._sid
        if sid is None:
            return
        code = self._why_blocked(sid, deadline)
        if code is not None and code > 0:
            raise MegaAccountBlocked(block_reason(code))
        self._unblocked()

    def _unblocked(self) -> None:
        with self._blocked_lock:
            was = self._blocked is not None
            self._blocked = None
        if was:
            metrics.mega_account_blocked(False)
            logger.info("MEGA account is no longer blocked")

    # -- log-in and session store ---------------------------------------------------------

    def _relogin(self, stale_sid: str, deadline: Deadline) -> None:
        if not self._lock.acquire(timeout=self._login_wait_s):
            raise MegaLoggingIn()
        try:
            if self._sid is not None and self._sid != stale_sid:
                return  # another thread already logged in again
            self._sid = None
            self._get_session(stale_sid, self._login_deadline(deadline))
        finally:
            self._lock.release()

    def _get_session(self, stale_sid: str | None, deadline: Deadline) -> None:
        """Under self._lock: adopt a stored session or MEGA_SESSION, or log in."""
        self._check_cooldown()
        if self._given is not None and self._given.sid == stale_sid:
            logger.warning(
                "MEGA rejected the session of MEGA_SESSION; logging in with the password"
            )
            self._given = None
        with self._store.locked(self._lock_timeout_s):
            cached = self._store.load()
            if cached is not None and cached.sid != stale_sid:
                self._adopt(cached, "the session store")
                return
            if cached is not None:
                self._store.clear(stale_sid)  # MEGA rejected it: no one else should try it
            if self._given is not None:
                self._adopt(self._given, "MEGA_SESSION")
                return
            self._log_in(deadline)

    def _check_cooldown(self) -> None:
        if self._refused is None:
            return
        refused_at, failure = self._refused
        if time.monotonic() - refused_at < self._login_cooldown_s:
            raise MegaLoginError(
                failure.code, cooling_down=True, mfa_sent=self._totp_secret is not None
            )
        self._refused = None

    def _adopt(self, session: CachedSession, source: str) -> None:
        self._master_key = list(session.master_key)
        self._user_handle = session.user_handle
        self._link_base = None  # the account's flags, asked again in the new session
        self._sid = session.sid
        logger.info("MEGA session taken from %s", source)

    def _log_in(self, deadline: Deadline) -> None:
        logger.info("logging in to MEGA")
        try:
            session = self._authenticate(deadline)
        except MegaApiError as exc:
            if exc.code == EBLOCKED:
                metrics.mega_login(ok=False)
                raise self._block(None, deadline) from None
            if exc.code not in LOGIN_REASONS:
                raise
            metrics.mega_login(ok=False)
            failure = MegaLoginError(exc.code, mfa_sent=self._totp_secret is not None)
            self._refused = (time.monotonic(), failure)
            logger.warning("%s; not trying again for %g s", failure, self._login_cooldown_s)
            raise failure from None
        except MegaError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, ZeroDivisionError):
            # The answer could not be decoded; its text may hold key material.
            raise MegaBadAnswer() from None
        metrics.mega_login(ok=True)
        self._unblocked()
        self._adopt(session, "a fresh log-in")
        logger.info("logged in to MEGA")
        try:
            self._store.save(session)
        except OSError as exc:
            # Still usable; only the sharing with other processes is lost.
            logger.warning("could not write the MEGA session cache (%s)", type(exc).__name__)

    def _authenticate(self, deadline: Deadline) -> CachedSession:
        """MEGA's log-in (the SDK's ``CommandPrelogin`` + ``CommandLogin``) with mega.py's
        key derivation and key helpers."""
        password = self._password.get_secret_value()
        pre = self._request({"a": "us0", "user": self._email}, None, deadline)
        # The account's version is its "v", as the SDK reads it (CommandPrelogin in
        # src/commands.cpp): 2 needs a salt, 1 has none, anything else is not understood.
        version = pre.get("v") if isinstance(pre, dict) else None
        salt = pre.get("s") if isinstance(pre, dict) else None
        if version == 2:  # PBKDF2-SHA512, 100,000 rounds
            if not isinstance(salt, str) or not salt:
                raise MegaBadAnswer()
            derived = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), a32_to_str(base64_to_a32(salt)), 100000, 32
            )
            password_key = str_to_a32(derived[:16])
            user_hash = base64_url_encode(derived[16:])
        elif version == 1:
            password_key = prepare_key(js_string_words(password))
            user_hash = stringhash(self._email, password_key)
        else:
            raise MegaBadAnswer()
        command: dict[str, Any] = {"a": "us", "user": self._email, "uh": user_hash}
        if self._totp_secret is not None:
            command["mfa"] = totp(self._totp_secret.get_secret_value())
        answer = self._request(command, None, deadline)
        if not isinstance(answer, dict):
            raise MegaBadAnswer()
        master_key = list(decrypt_key(base64_to_a32(answer["k"]), password_key))
        user = answer.get("u")
        return CachedSession(
            session_id(answer, master_key), master_key, user if isinstance(user, str) else None
        )


SID_BYTES = 43  # include/mega/megaclient.h: SIDLEN = 2 * 16 + 8 * 4 / 3 + 1
_HANDLE_IN_SID = slice(16, 27)  # the user's handle, 11 base64url characters


def session_id(answer: dict[str, Any], master_key: list[int]) -> str:
    """The session id in a log-in answer: a temporary ``tsid`` checked against the master
    key, or ``csid`` encrypted with the account's RSA key (decrypted with its private key,
    itself encrypted with the master key).

    The decrypted number is read at a fixed width, its leading zero bytes kept: the SDK's
    ``AsymmCipher::decrypt`` (``src/crypto/cryptopp.cpp``) takes the top 43 bytes of it
    written in p's and q's byte lengths minus 2, and the web client left-pads it
    (``crypto_rsadecrypt``). Stripping the zeros, as mega.py does, shifts the id of about
    one log-in in 256. As the SDK does (``CommandLogin`` in ``src/commands.cpp``), the
    user's handle inside the id must be the account's.
    """
    if "tsid" in answer:
        tsid = base64_url_decode(answer["tsid"])
        if a32_to_str(encrypt_key(str_to_a32(tsid[:16]), master_key)) != tsid[-16:]:
            raise MegaBadAnswer()
        return str(answer["tsid"])
    private = a32_to_str(decrypt_key(base64_to_a32(answer["privk"]), master_key))
    parts, widths = [], []
    for _ in range(4):  # p, q, d, u as MPIs: a 2-byte bit length, then the number
        length = 2 + (int.from_bytes(private[:2], "big") + 7) // 8
        parts.append(mpi_to_int(private[:length]))
        widths.append(length - 2)
        private = private[length:]
    p, q, d = parts[0], parts[1], parts[2]
    sid = pow(mpi_to_int(base64_url_decode(answer["csid"])), d, p * q)
    width = max(widths[0] + widths[1] - 2, (sid.bit_length() + 7) // 8)
    raw = sid.to_bytes(width, "big")[:SID_BYTES]
    user = answer.get("u")
    if len(raw) < SID_BYTES or not isinstance(user, str):
        raise MegaBadAnswer()
    try:
        inside = base64_url_decode(raw[_HANDLE_IN_SID].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MegaBadAnswer() from None
    if inside != base64_url_decode(user):
        raise MegaBadAnswer()
    return base64_url_encode(raw)


def js_string_words(text: str) -> list[int]:
    """32-bit words of ``text`` packed as the web client's ``str_to_a32`` packs a string,
    for v1 password keys: one byte lane per UTF-16 code unit, shifted into place in 32-bit
    arithmetic (a unit above 0xFF spills its high byte into the lane before). The SDK does
    the same from UTF-8 (``MegaClient::utf8_to_a32forjs`` in ``src/megaclient.cpp``), so
    any password works; mega.py's ``str_to_a32`` accepts only Latin-1."""
    utf16 = text.encode("utf-16-be")
    words = [0] * ((len(utf16) // 2 + 3) // 4)
    for index in range(len(utf16) // 2):
        unit = int.from_bytes(utf16[2 * index : 2 * index + 2], "big")
        words[index >> 2] |= (unit << (24 - 8 * (index & 3))) & 0xFFFFFFFF
    return words


def _error_in(value: Any) -> int | None:
    """The error code a result stands for: a negative number or ``{"err": N}``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value < 0 else None
    if isinstance(value, dict) and isinstance(value.get("err"), int) and value["err"] < 0:
        return int(value["err"])
    return None


def _result(content: bytes) -> Any:
    """The command's result; every error form raises ``MegaApiError``."""
    try:
        answer = json.loads(content)
    except ValueError:
        raise MegaBadAnswer() from None
    code = _error_in(answer)  # a request-level error (a number, or an object)
    if code is not None:
        raise MegaApiError(code, whole_request=True)
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer
    if not isinstance(answer, list) or not answer:
        raise MegaBadAnswer()
    code = _error_in(answer[0])
    if code is not None:
        raise MegaApiError(code)
    return answer[0]
