"""``POST /tickets``: a token allowed to issue them hands out short-lived upload rights."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, ByteSize, Field

from app.access.errors import NotPermitted, TicketsDisabled
from app.access.tickets import issue_ticket
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import BAD_REQUEST, error_responses
from app.intake.filenames import safe_filename

router = APIRouter(tags=["tickets"])
MAX_TICKET_SECONDS = 7 * 24 * 3600


class TicketRequest(BaseModel):
    expires_in: int = Field(ge=1, le=MAX_TICKET_SECONDS, description="Seconds the ticket is valid.")
    max_uses: int = Field(default=1, ge=1, le=1_000_000, description="Uploads it allows.")
    max_bytes: ByteSize | None = Field(
        default=None, gt=0, description="Largest file per upload (bytes or units, e.g. 10MB)."
    )
    filename: str | None = Field(
        default=None,
        description="If set, the ticket only uploads this name with PUT /files/{name}.",
    )


class TicketAnswer(BaseModel):
    ticket: str = Field(description="Send it like a token: X-Auth-Token or Bearer.")
    expires_at: datetime
    max_uses: int
    max_bytes: int | None
    filename: str | None


@router.post(
    "/tickets",
    response_model=TicketAnswer,
    responses=error_responses("params", "token", "caller", "tickets"),
    summary="Issue an upload ticket (needs a token with can_issue_tickets)",
)
async def create_ticket(
    body: TicketRequest, caller: CallerDep, services: ServicesDep
) -> TicketAnswer:
    secret = services.settings.access.ticket_secret
    if secret is None:
        raise TicketsDisabled("tickets are not enabled: set TICKET_SECRET")
    if caller.ticket is not None or not caller.policy.can_issue_tickets:
        raise NotPermitted(f"token {caller.name!r} may not issue tickets")
    ceiling = services.gatekeeper.file_limit(caller)
    if body.max_bytes is not None and body.max_bytes > ceiling:
        raise BAD_REQUEST(f"max_bytes is larger than this token's limit ({ceiling})")
    filename = safe_filename(body.filename) if body.filename is not None else None
    expires_at = int(time.time()) + body.expires_in
    text, ticket = issue_ticket(
        secret.get_secret_value(),
        caller.policy,
        expires_at,
        body.max_uses,
        int(body.max_bytes) if body.max_bytes is not None else None,
        filename,
    )
    return TicketAnswer(
        ticket=text,
        expires_at=datetime.fromtimestamp(expires_at, UTC),
        max_uses=ticket.max_uses,
        max_bytes=ticket.max_bytes,
        filename=ticket.filename,
    )
