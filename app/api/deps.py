"""What routes depend on: the running services, who is calling, and upload admission."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Header, Request

from app import metrics
from app.api.auth_brake import AuthBrake
from app.api.context import cap_body, start_upload_record
from app.api.errors import ApiError
from app.api.receive import MULTIPART_OVERHEAD, check_declared_length
from app.config import Settings
from app.filenames import InvalidFilename, filename_or_default, safe_filename
from app.last_good_tokens import LastGoodTokens
from app.logging_setup import token_name
from app.ratelimit import LimitExceeded, UploadLimits
from app.shared_state import SharedState
from app.spool import Spool, UploadSlots
from app.storage.base import StorageBackend
from app.tickets import Ticket, TicketError, is_ticket, read_ticket
from app.tokens import TokenPolicy, TokenRegistry

RETRY_AFTER_BUSY = "5"


@dataclass
class Services:
    """Everything a request may use, built once per app by ``create_app``."""

    settings: Settings
    backend: StorageBackend
    spool: Spool
    shared: SharedState
    # Under gunicorn: the tokens file as last accepted by any process of the instance.
    last_good_tokens: LastGoodTokens | None = None
    upload_slots: UploadSlots = field(init=False)
    tokens: TokenRegistry = field(init=False)
    limits: UploadLimits = field(init=False)
    auth_brake: AuthBrake = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.upload_slots = UploadSlots(
            settings.temp_upload_dir,
            settings.max_concurrent_uploads,
            settings.upload_slot_wait_seconds,
        )
        self.auth_brake = AuthBrake(settings.auth_failures_per_minute, self.shared)
        self.tokens = TokenRegistry(
            settings.auth_token.get_secret_value() if settings.auth_token else None,
            settings.tokens_file,
            int(settings.max_upload_bytes),
            self.last_good_tokens,
        )
        self.limits = UploadLimits(self.shared)

    def backend_for(self, service: str | None) -> StorageBackend:
        """The backend a request names; None means the configured one."""
        if service is None or service.strip().lower() == self.backend.name:
            return self.backend
        raise ApiError(
            400,
            "unsupported_service",
            f"unsupported service {service[:40]!r}; supported services: {self.backend.name}",
        )


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a named token, or a ticket acting for its issuer's name."""

    policy: TokenPolicy
    ticket: Ticket | None = None

    @property
    def name(self) -> str:
        return self.policy.name


TokenHeader = Annotated[str | None, Header(description="A token or an upload ticket.")]
BearerHeader = Annotated[
    str | None, Header(description="Alternatively: `Bearer <token or ticket>`.")
]


def offered_credential(x_auth_token: str | None, authorization: str | None) -> str | None:
    """The token or ticket a request carries: ``X-Auth-Token``, else a bearer token."""
    if x_auth_token is None and authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip()
    return x_auth_token


def identify(services: Services, offered: str | None, address: str) -> Caller:
    """The caller behind ``offered``; 401/403 naming what is wrong otherwise, and 429
    after too many wrong credentials from ``address`` (see auth_brake)."""
    if not offered:
        raise ApiError(
            401, "missing_token", "an auth token is required", {"WWW-Authenticate": "Bearer"}
        )
    services.auth_brake.check(address)  # 429 after too many wrong tokens from here
    try:
        return _caller(services, offered)
    except ApiError:
        services.auth_brake.failed(address)
        raise


def _caller(services: Services, offered: str) -> Caller:
    if is_ticket(offered):
        return _ticket_caller(services, offered)
    policy = services.tokens.lookup(offered)
    if policy is None:
        raise ApiError(403, "invalid_token", "the auth token is not valid")
    return Caller(policy)


def _ticket_caller(services: Services, offered: str) -> Caller:
    secret = services.settings.ticket_secret
    if secret is None:
        raise ApiError(403, "invalid_ticket", "this service does not accept tickets")
    try:
        ticket = read_ticket(secret.get_secret_value(), offered, time.time())
    except TicketError as error:
        raise ApiError(error.status, error.code, str(error)) from None
    policy = services.tokens.by_name(ticket.issuer)
    if policy is None or not policy.can_issue_tickets:
        # Revoking a token (or its right to issue) revokes its tickets too.
        raise ApiError(403, "invalid_ticket", "the ticket's issuer is no longer valid")
    return Caller(policy, ticket)


async def authenticate(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
) -> Caller:
    """The caller, for routes that need one but are not uploads."""
    offered = offered_credential(x_auth_token, authorization)
    caller = await _identify(services, offered, request)
    token_name.set(caller.name)
    return caller


async def require_token(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
) -> Caller:
    """Admit an upload: a valid token or ticket within its limits (401/403/413/429 if not)."""
    state = request.scope.setdefault("state", {})
    method = "multipart" if request.method == "POST" else "raw"
    record = start_upload_record(state, services.backend.name, method)
    if "filename" in request.path_params:
        record.name = filename_or_default(request.path_params["filename"])
    offered = offered_credential(x_auth_token, authorization)
    caller = await _identify(services, offered, request)
    record.token = caller.name
    token_name.set(caller.name)
    _check_scope(request, services, caller)
    declared = _cap_size(request, services, caller)
    try:
        await to_thread.run_sync(services.limits.admit, caller.policy, declared, caller.ticket)
    except LimitExceeded as refusal:
        if refusal.limit:
            metrics.limit_rejected(caller.name, refusal.limit)
        retry = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
        raise ApiError(refusal.status, refusal.code, refusal.message, retry) from None
    record.settle = functools.partial(services.limits.settle, caller.policy, caller.ticket)
    record.admitted = True
    metrics.upload_started()
    return caller


async def _identify(services: Services, offered: str | None, request: Request) -> Caller:
    # The brake's counts may live in Redis: never wait for it on the event loop.
    return await to_thread.run_sync(identify, services, offered, _address(request))


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _check_scope(request: Request, services: Services, caller: Caller) -> None:
    """403 when the caller may not use the requested backend or file name."""
    service = (request.query_params.get("service") or services.backend.name).strip().lower()
    if not caller.policy.allows_service(service):
        raise ApiError(
            403, "service_not_allowed", f"token {caller.name!r} may not upload to {service[:40]!r}"
        )
    wanted = caller.ticket.filename if caller.ticket else None
    if wanted is None:
        return
    if request.method != "PUT":
        raise ApiError(
            403,
            "ticket_wrong_file",
            f"this ticket is for one file: upload it with PUT /files/{wanted}",
        )
    try:
        name = safe_filename(request.path_params.get("filename", ""))
    except InvalidFilename:
        name = ""
    if name != wanted:
        raise ApiError(403, "ticket_wrong_file", f"this ticket is only for the file {wanted!r}")


def _cap_size(request: Request, services: Services, caller: Caller) -> int | None:
    """Apply the caller's size limit (413 before any byte is read); the declared size."""
    limits = [services.spool.limit, caller.policy.max_upload_bytes]
    if caller.ticket is not None:
        limits.append(caller.ticket.max_bytes)
    limit = min(value for value in limits if value is not None)
    overhead = MULTIPART_OVERHEAD if request.method == "POST" else 0
    if limit < services.spool.limit:
        check_declared_length(request, limit, overhead)
        cap_body(request.scope["state"], limit, overhead)
    declared = request.headers.get("content-length")
    # A multipart body's length includes its framing: count it as "some bytes" only.
    return int(declared) if declared and declared.isdigit() and not overhead else None


Authorized = Depends(require_token)
CallerDep = Annotated[Caller, Depends(authenticate)]
