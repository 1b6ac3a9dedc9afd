"""Account creation and MEGA's log-in key material."""

from .registry import Account, create_account

__all__ = ["Account", "create_account"]
