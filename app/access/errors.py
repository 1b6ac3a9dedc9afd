"""Why a caller may not do what it asked: the access errors, the whole hierarchy in one place.

These know nothing of HTTP. ``str(error)`` is written for the client (it names a token or
a limit, never a secret); ``retry_after`` is set where waiting helps and the wait is known.
``app.api.errors`` maps each class to its status and code.
"""

from __future__ import annotations


class AccessError(Exception):
    """A request refused because of who sent it or how much it may still do."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoCredential(AccessError):
    """No token or ticket was sent."""


class InvalidToken(AccessError):
    """The token is not (or no longer) valid."""


class InvalidTicket(AccessError):
    """The ticket is forged, damaged, voided by its issuer's rotation, or tickets are off."""


class TicketExpired(AccessError):
    """The ticket's time is up."""


class TooManyFailures(AccessError):
    """Too many wrong credentials from the caller's address; ``retry_after`` says when."""


class ServiceNotAllowed(AccessError):
    """The token may not use the storage service it asked for."""


class TicketWrongFile(AccessError):
    """The ticket is for one file name, and this request is for another."""


class NotPermitted(AccessError):
    """The token lacks the permission the operation needs (e.g. issuing tickets)."""


class TicketsDisabled(AccessError):
    """Tickets cannot be issued: no TICKET_SECRET is configured."""


class LimitReached(AccessError):
    """A limit of the token (or ticket) refuses the request; ``limit`` names it for metrics."""

    limit = ""


class RateLimited(LimitReached):
    """``uploads_per_minute`` is used up."""

    limit = "uploads_per_minute"


class QuotaExceeded(LimitReached):
    """``bytes_per_day`` has no room for this file."""

    limit = "bytes_per_day"


class TicketUsedUp(LimitReached):
    """The ticket has been used ``max_uses`` times."""

    limit = "ticket_max_uses"


class TicketsUnavailable(AccessError):
    """A ticket's uses cannot be counted (the shared store is out of reach)."""


class MayNotList(AccessError):
    """The caller may only upload: listing and managing uploads need ``can_list`` or
    ``can_manage`` (tickets never may)."""


class MayNotManage(AccessError):
    """The upload is not only the caller's: other uploaders rely on the same file."""
