"""``python server.py mega-session``: log in once (on a fast machine) and print a session.

A half-CPU instance may need many minutes for MEGA's proof of work; a session made
elsewhere and given as ``MEGA_SESSION`` lets it start without logging in at all.
"""

from __future__ import annotations

import sys

from app.config import Settings

from .client import MegaClient
from .errors import MegaError, to_storage_error
from .settings import retry_policy

WARNING = (
    "# MEGA_SESSION below is a credential: it opens the account and its files like the "
    "password does. Store it as a secret setting; it stays valid until you log out of "
    "this session in MEGA (Settings > Security > Session history)."
)


def print_session(settings: Settings) -> int:
    """Log in without reading or writing any session store, print the line; exit status."""
    mega = settings.mega
    assert mega.email is not None and mega.password is not None  # checked at start-up
    client = MegaClient(
        mega.api_url,
        mega.email,
        mega.password.get_secret_value(),
        policy=retry_policy(mega),
        totp_secret=mega.totp_secret.get_secret_value() if mega.totp_secret else None,
        connect_timeout=mega.connect_timeout,
        read_timeout=mega.read_timeout,
        login_deadline_s=mega.login_deadline_seconds,
        login_wait_s=mega.login_deadline_seconds,
    )
    try:
        line = client.export_session()
    except MegaError as exc:
        print(f"paimon-server: {to_storage_error(exc)}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(WARNING, file=sys.stderr, flush=True)
    print(line, flush=True)
    return 0
