"""The MEGA backend: API client (mega.py wrapped), upload data path, error table, retries."""

from .backend import MegaBackend

__all__ = ["MegaBackend"]
