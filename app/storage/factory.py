"""Builds the one backend the settings ask for; there is no fallback from one to another."""

from __future__ import annotations

from app.config import Settings
from app.shared_state import SharedState
from app.storage.base import StorageBackend
from app.storage.local import LocalBackend


def build_backend(settings: Settings, shared: SharedState) -> StorageBackend:
    """The configured backend; MEGA keeps its session and log-in lock in ``shared`` when
    that is Redis, so that all instances log in once."""
    if settings.storage_backend == "local":
        return LocalBackend(settings.local.storage_dir)
    # mega.py is only imported when it is used.
    from app.storage.mega import MegaBackend
    from app.storage.mega.session import shared_session_store
    from app.storage.mega.settings import pool_size

    mega = settings.mega
    assert mega.email is not None and mega.password is not None  # checked at start-up
    store = shared_session_store(
        shared, mega.email, mega.password.get_secret_value(), mega.api_url, mega.session_file
    )
    return MegaBackend(
        mega, store, pool_size=pool_size(mega, settings.intake.max_concurrent_uploads)
    )
