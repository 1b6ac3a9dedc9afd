"""The MEGA backend: client (transport, session, log-in), upload data path, error catalogue."""

from .backend import MegaBackend
from .settings import MegaSettings

__all__ = ["MegaBackend", "MegaSettings"]
