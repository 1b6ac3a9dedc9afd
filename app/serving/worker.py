"""The gunicorn worker class: uvicorn's worker with the service's HTTP protocol limits.

gunicorn's own ``limit_request_*`` settings do not reach uvicorn workers, so the limits
live in the protocol (``app.serving.protocol``) and this worker installs it. Named in
gunicorn.conf.py as ``worker_class``.

gunicorn's own workers leave when their master is gone; uvicorn's does not look, so a
worker whose master was killed outright (SIGKILL, the OOM killer) would go on serving,
holding the port against the next start, with nobody to stop or replace it. This one
asks Linux to be told (``PR_SET_PDEATHSIG``) and looks itself at every heartbeat too.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from uvicorn_worker import UvicornWorker

from app.serving import master
from app.serving.protocol import limited_protocol

PR_SET_PDEATHSIG = 1  # linux/prctl.h

log = logging.getLogger("paimon.serving")


class PaimonWorker(UvicornWorker):
    """uvicorn's gunicorn worker, serving through ``limited_protocol``, that leaves with
    its master."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Bounded as the master would bound it: a worker stopping on its own (its master
        # gone) has nobody to kill it when the time is up.
        self.config.timeout_graceful_shutdown = self.cfg.graceful_timeout

    def init_signals(self) -> None:
        super().init_signals()
        # After gunicorn has changed the worker's user (--user): Linux forgets the
        # parent-death signal on any change of user or group.
        _stop_with_parent(self.ppid)

    async def _serve(self) -> None:
        # Runs in the worker process after the app was loaded: the settings the app
        # was made with, the master's last good ones.
        self.config.http = limited_protocol(master.served_settings())
        await super()._serve()

    async def callback_notify(self) -> None:
        if os.getppid() != self.ppid:
            # SIGTERM: uvicorn's own graceful stop, as when the master asks for it.
            log.warning("the gunicorn master is gone; worker %d stops", os.getpid())
            signal.raise_signal(signal.SIGTERM)
        await super().callback_notify()


def _stop_with_parent(parent: int) -> None:
    """Have Linux send SIGTERM to this process when ``parent`` dies."""
    if sys.platform != "linux":
        return  # the heartbeat's look is all there is
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was made
        signal.raise_signal(signal.SIGTERM)
