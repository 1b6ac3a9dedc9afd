"""What runs in the background while the service serves: the index of uploads built at
start-up and kept fresh, the storage's used and total bytes asked again, and the sweeper
that deletes expired uploads every ``SWEEP_INTERVAL_SECONDS``.

Every process runs it. The sweep and (with Redis) the build are shared: whoever holds
the lock does them, the others find them done. A failure (storage or Redis out of reach)
is logged once, tried again at the next tick, and logged again when it is over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio import to_thread

from app.records.service import Records
from app.records.space import SpaceTracker

log = logging.getLogger(__name__)

# The background work looks at what is due this often (or more often, for short intervals).
TICK_S = 5.0


async def maintain(
    records: Records | None, space: SpaceTracker, sweep_interval_s: float, refresh_s: float
) -> None:
    """Run until cancelled (the service stops)."""
    tick = min(TICK_S, sweep_interval_s, refresh_s)
    failing: dict[str, str] = {}
    next_space = 0.0
    next_sweep: float | None = None
    while True:
        now = time.monotonic()
        if records is not None:
            await _step("building the index of uploads", records.refresh, failing)
        if now >= next_space and await _step("reading the storage's space", space.refresh, failing):
            next_space = now + refresh_s
        if records is not None and await to_thread.run_sync(records.ready, abandon_on_cancel=True):
            if next_sweep is None:
                next_sweep = now  # the first sweep as soon as the index is there
            if now >= next_sweep:
                next_sweep = now + sweep_interval_s
                await _step("sweeping expired uploads", records.sweep, failing)
        await anyio.sleep(tick)


async def _step(what: str, work: Callable[[], Any], failing: dict[str, str]) -> bool:
    """Run ``work`` in a worker thread; whether it succeeded. Logs a failure when it
    starts or changes, and once when it is over.

    A service that stops does not wait for it (a MEGA log-in it waits on may take
    minutes): the work is left to end in its thread, and a sweep cut short is finished
    by the next one, which is safe by design (``Records.sweep``)."""
    try:
        await to_thread.run_sync(work, abandon_on_cancel=True)
    except Exception as error:
        message = str(error) or type(error).__name__
        if failing.get(what) != message:
            log.warning("%s failed: %s; trying again in the background", what, message)
            failing[what] = message
        return False
    if failing.pop(what, None) is not None:
        log.info("%s works again", what)
    return True
