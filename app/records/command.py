"""``python server.py sweep``: delete expired uploads once and exit, for cron jobs.

It reads the same settings as the service, logs in to the storage, builds the index
from one listing when no shared one is ready (with ``REDIS_URL`` it uses the service's),
and sweeps under the same lock as the running service, so the two never sweep at once.
Exit status 0 when the sweep is done (or another one is running), 1 when the storage or
the settings cannot be used.
"""

from __future__ import annotations

import sys

from app.config import Settings
from app.records import SpaceTracker, build_records
from app.shared_state import build_shared_state
from app.storage.base import StorageError
from app.storage.factory import build_backend


def run_sweep(settings: Settings) -> int:
    """Sweep once; the exit status."""
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    shared = build_shared_state(redis_url)
    backend = build_backend(settings, shared)
    try:
        backend.start()
        capabilities = backend.capabilities()
        records = build_records(
            settings, backend, capabilities, shared, SpaceTracker(capabilities.space)
        )
        if records is None:
            print(
                f"paimon-server: the storage backend {backend.name!r} keeps no records",
                file=sys.stderr,
            )
            return 1
        if capabilities.connect is not None:
            capabilities.connect.connect()
        swept = records.sweep()
    except StorageError as error:
        print(f"paimon-server: sweep failed: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        backend.close()
        shared.close()
    if swept is None:
        print("paimon-server: another sweep is running; it does the work", flush=True)
    else:
        print(
            f"paimon-server: sweep done: {swept.deleted} expired files deleted, "
            f"{swept.trimmed} kept for other uploads, {swept.failed} left for the next sweep",
            flush=True,
        )
    return 0
