"""Fault injection settings, shared by every request thread.

Each setting is a typed attribute. Settings whose name ends in ``_probability``
are rolled per request with the seeded generator; settings ending in ``_next``
are counters: the next N matching requests fail and the counter runs down.
Assigning an attribute, calling :meth:`Faults.update` or POSTing JSON to
``/_emulator/faults`` all go through the same validation under one lock.
"""

from __future__ import annotations

import random
import threading
from typing import Any

GiB = 1024**3

# name -> (type, default). None in a default means "off".
FAULT_FIELDS: dict[str, tuple[type, Any]] = {
    # Log-in hashcash: easiness of the 402 challenge, None = no challenge.
    "hashcash_easiness": (int, None),
    # The next N challenges are issued at easiness 0 (about 2**29 tries: never solved),
    # to see a client give up on one and ask for a fresh one with an empty answer.
    "hashcash_hard_challenges_next": (int, 0),
    # Challenge every API request rather than only the ones carrying 'us'.
    "hashcash_all_requests": (bool, False),
    # Whole-request bare error codes on /cs.
    "api_eagain_probability": (float, 0.0),  # -3
    "api_eagain_next": (int, 0),
    "api_ratelimit_probability": (float, 0.0),  # -4
    "api_ratelimit_next": (int, 0),
    # The next N requests to /cs get this HTTP status and an empty body (no X-Hashcash).
    "api_http_error_next": (int, 0),
    "api_http_error_status": (int, 500),
    "api_tempunavail_probability": (float, 0.0),  # -18
    "api_delay": (float, 0.0),  # seconds before answering /cs
    # The next N requests are carried out (and their answer kept for their id), then the
    # connection is dropped before the answer goes out.
    "api_answer_lost_next": (int, 0),
    "api_answer_lost_command": (str, None),  # only requests holding this command
    # A session answers -15 ESID once it has served this many requests.
    "session_expire_after_calls": (int, None),
    # 'us0' answers a v2 account without its salt ({"v": 2}).
    "prelogin_without_salt": (bool, False),
    # The next N log-ins get a session id whose first byte is zero (MEGA's are, about one
    # in 256; otherwise the emulator avoids it, for stock clients that drop it).
    "session_id_leading_zero_next": (int, 0),
    # These accounts are blocked: log-in answers -16 EBLOCKED, and so does every request
    # of one of their sessions, as a whole, except one holding only 'whyamiblocked'
    # (batchSeparately in the SDK's CommandWhyAmIblocked), which answers
    # blocked_reason_code (megaapi.h: 200 copyright, 300 terms of service, 400/401
    # disabled/removed by a business admin, 700 email verification).
    "blocked_emails": (list, []),
    "blocked_reason_code": (int, 300),
    # -17 EOVERQUOTA on 'u' (upload URL) and/or 'p' (put nodes).
    "over_quota_upload_url": (bool, False),
    "over_quota_put_nodes": (bool, False),
    # The next N 'p' of an uploaded file answer -9 and the upload is gone.
    "put_nodes_storage_gone_next": (int, 0),
    # 'ug' carries feature flags with this "ff_site" (1: links on mega.app).
    "site_flag": (int, None),
    # The upload server answers in this protocol version whatever 'u' asked for: 0 the
    # legacy form (empty acknowledgements, a 36-character token), 2 the web client's (empty
    # acknowledgements, a 36-byte binary token), 3 the SDK's ("0" acknowledgements).
    "upload_answer_version": (int, None),
    # 'u' answers http:// upload URLs even when asked for ssl.
    "plain_upload_urls": (bool, False),
    # The code 'u' answers when over quota: -17, -24 (going over) or -29 (paywall).
    "over_quota_code": (int, -17),
    # Per-command errors as {"err": N} objects instead of bare numbers, as MEGA's API
    # answers newer commands (the SDK's Command::checkError reads both forms).
    "error_objects": (bool, False),
    # MEGA answers a request whose id (?id=) it has answered before from its cache,
    # without carrying it out again: the SDK resends a request unchanged, same id, only
    # after a transport failure or a bare -3/-4 ("server API is idempotent", src/request.cpp
    # RequestDispatcher; src/megaclient.cpp MegaClient::exec).
    "replay_repeated_ids": (bool, True),
    # The next N commands (of the name command_error_command, or any) fail on their own
    # with command_error_code, inside a complete answer: [-3] or [{"err": -3}].
    "command_error_next": (int, 0),
    "command_error_code": (int, -3),
    "command_error_command": (str, None),
    "storage_quota_bytes": (int, 20 * GiB),
    "transfer_quota_bytes": (int, 10 * GiB),
    # Upload chunk POSTs.
    "chunk_delay": (float, 0.0),
    "chunk_http500_probability": (float, 0.0),
    "chunk_http500_next": (int, 0),
    "chunk_http503_probability": (float, 0.0),
    "chunk_http503_next": (int, 0),
    "chunk_http429_next": (int, 0),
    "chunk_http403_next": (int, 0),  # upload URL expired
    "chunk_http404_next": (int, 0),  # upload URL unknown
    "chunk_http509_next": (int, 0),  # transfer quota exceeded
    "chunk_drop_probability": (float, 0.0),  # read part of the body, drop the socket
    "chunk_drop_next": (int, 0),
    "chunk_error_next": (int, 0),  # answer 200 with chunk_error_code as the body
    # The next N pieces (at chunk_answer_lost_offset, or any) are stored, then the
    # connection is dropped before the answer: the client cannot know they arrived.
    "chunk_answer_lost_next": (int, 0),
    "chunk_answer_lost_offset": (int, None),
    # Once an upload is complete, later POSTs to its URL get this HTTP status (None: the
    # completion answer again).
    "completed_upload_status": (int, None),
    "chunk_error_code": (int, -4),
    # The upload server refuses a piece ending more than this past the first byte it has
    # not received yet (-4), as MEGA's do beyond the SDK's 256 MiB gap.
    "upload_window_bytes": (int, 256 * 1024**2),
    # POSTs of the piece at this offset wait chunk_offset_delay seconds first.
    "chunk_delay_offset": (int, None),
    "chunk_offset_delay": (float, 0.0),
    # Download GETs.
    "download_http509_next": (int, 0),
}


def _coerce(name: str, value: Any) -> Any:
    kind, default = FAULT_FIELDS[name]
    if value is None:
        if default is not None:
            raise ValueError(f"fault {name} cannot be None")
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"fault {name} must be a boolean")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"fault {name} must be a string")
        return value
    if kind is list:
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise TypeError(f"fault {name} must be a list")
        return sorted(str(v).lower() for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fault {name} must be a number")
    if kind is int:
        if int(value) != value:
            raise ValueError(f"fault {name} must be an integer")
        value = int(value)
    else:
        value = float(value)
    if name.endswith("_probability") and not 0.0 <= value <= 1.0:
        raise ValueError(f"fault {name} must be within [0, 1]")
    non_negative = name.endswith(("_next", "_delay", "_bytes", "_calls"))
    if non_negative and value < 0:
        raise ValueError(f"fault {name} must not be negative")
    return value


class Faults:
    """Thread-safe fault settings with a seedable random generator."""

    def __init__(self, seed: int | None = None, **settings: Any) -> None:
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_rng", random.Random(seed))
        object.__setattr__(
            self,
            "_values",
            {k: (list(d) if isinstance(d, list) else d) for k, (_, d) in FAULT_FIELDS.items()},
        )
        self.update(**settings)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name not in values:
            raise AttributeError(name)
        with object.__getattribute__(self, "_lock"):
            value = values[name]
            return list(value) if isinstance(value, list) else value

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def update(self, **settings: Any) -> None:
        """Change several settings at once; unknown names or bad values raise
        ValueError, bad types TypeError, and nothing changes."""
        unknown = sorted(set(settings) - set(FAULT_FIELDS))
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
        coerced = {name: _coerce(name, value) for name, value in settings.items()}
        with self._lock:
            self._values.update(coerced)

    def reset(self) -> None:
        with self._lock:
            for name, (_, default) in FAULT_FIELDS.items():
                self._values[name] = list(default) if isinstance(default, list) else default

    def seed(self, seed: int | None) -> None:
        with self._lock:
            self._rng.seed(seed)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {k: (list(v) if isinstance(v, list) else v) for k, v in self._values.items()}

    def roll(self, name: str) -> bool:
        """True with the probability held by setting ``name``."""
        with self._lock:
            probability = self._values[name]
            return probability > 0 and self._rng.random() < probability

    def take(self, name: str) -> bool:
        """Consume one unit of a ``_next`` counter; True when one was left."""
        with self._lock:
            if self._values[name] > 0:
                self._values[name] -= 1
                return True
            return False

    def fires(self, stem: str) -> bool:
        """A ``<stem>_next`` counter or a ``<stem>_probability`` roll fires."""
        if f"{stem}_next" in FAULT_FIELDS and self.take(f"{stem}_next"):
            return True
        return f"{stem}_probability" in FAULT_FIELDS and self.roll(f"{stem}_probability")

    def random_fraction(self) -> float:
        with self._lock:
            return self._rng.random()
