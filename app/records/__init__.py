"""Upload records: every upload's record kept with its file in storage, the index that
finds them fast, deletion, expiry and dedup (``service.Records``)."""

from __future__ import annotations

import hashlib

from app.config import Settings
from app.records.index import MemoryStore, RecordIndex, RedisStore
from app.records.locks import Locks
from app.records.service import Records
from app.records.space import SpaceTracker
from app.shared_state import KEY_PREFIX, RedisState, SharedState
from app.storage.base import Capabilities, StorageBackend

__all__ = ["Records", "SpaceTracker", "build_records"]


def namespace(settings: Settings) -> str:
    """Names the records of one storage place (account and folder, or directory), so that
    services sharing a Redis but not a storage never mix their indexes or locks."""
    if settings.storage_backend == "mega":
        email = (settings.mega.email or "").strip().lower()
        place = "\n".join(["mega", email, settings.mega.api_url, settings.mega.folder])
    else:
        place = f"local\n{settings.local.storage_dir.resolve()}"
    return hashlib.sha256(place.encode()).hexdigest()[:16]


def build_records(
    settings: Settings,
    backend: StorageBackend,
    capabilities: Capabilities,
    shared: SharedState,
    space: SpaceTracker,
) -> Records | None:
    """The records of ``backend`` when it keeps them (its declared capabilities), with the
    index in Redis when that is configured, else in this process."""
    keeping = capabilities.records
    if keeping is None:
        return None
    name = namespace(settings)
    store = RedisStore(shared, name) if isinstance(shared, RedisState) else MemoryStore()
    locks = Locks(shared, keeping.lock_dir, f"{KEY_PREFIX}records:{name}:lock")
    return Records(
        backend,
        keeping,
        capabilities.links,
        RecordIndex(store),
        locks,
        space,
        settings.records.index_refresh_seconds,
    )
