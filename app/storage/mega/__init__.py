"""The MEGA backend: client (transport, session, log-in), upload data path, error catalogue."""

from .backend import MegaBackend

__all__ = ["MegaBackend"]
