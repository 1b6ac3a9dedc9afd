"""Builds the one backend the settings ask for; there is no fallback from one to another."""

from __future__ import annotations

from app.config import Settings
from app.storage.base import StorageBackend
from app.storage.local import LocalBackend


def build_backend(settings: Settings) -> StorageBackend:
    if settings.storage_backend == "local":
        return LocalBackend(settings.local_storage_dir)
    # mega.py is only imported when it is used.
    from app.storage.mega import MegaBackend, MegaSettings

    return MegaBackend(MegaSettings.from_settings(settings))
