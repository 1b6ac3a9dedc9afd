"""The gunicorn worker class: uvicorn's worker with the service's HTTP protocol limits.

gunicorn's own ``limit_request_*`` settings do not reach uvicorn workers, so the limits
live in the protocol (``app.serving.protocol``) and this worker installs it. Named in
gunicorn.conf.py as ``worker_class``.
"""

from __future__ import annotations

from uvicorn_worker import UvicornWorker

from app.serving import master
from app.serving.protocol import limited_protocol


class PaimonWorker(UvicornWorker):
    """uvicorn's gunicorn worker, serving through ``limited_protocol``."""

    async def _serve(self) -> None:
        # Runs in the worker process after the app was loaded: the settings the app
        # was made with, the master's last good ones.
        self.config.http = limited_protocol(master.served_settings())
        await super()._serve()
