"""What routes depend on: the running services, who is calling, and upload admission."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Header, Query, Request

from app import metrics
from app.access.admission import Caller, Gatekeeper
from app.access.brake import AuthBrake
from app.access.limits import Allowances, Grant
from app.access.tokens import TokenRegistry
from app.api.context import UploadRecord, start_upload_record
from app.api.errors import UNSUPPORTED_SERVICE
from app.config import Settings
from app.intake.body import Pace
from app.intake.errors import InvalidLength, UploadTooLarge
from app.intake.filenames import filename_or_default
from app.intake.multipart import MULTIPART_OVERHEAD
from app.intake.slots import Slot, UploadSlots
from app.intake.spool import Spool
from app.logging_setup import token_name
from app.shared_state import SharedState
from app.storage.base import Capabilities, StorageBackend


@dataclass
class Services:
    """Everything a request may use, built once per app by ``create_app``."""

    settings: Settings
    backend: StorageBackend
    spool: Spool
    shared: SharedState
    capabilities: Capabilities = field(init=False)
    upload_slots: UploadSlots = field(init=False)
    tokens: TokenRegistry = field(init=False)
    gatekeeper: Gatekeeper = field(init=False)
    pace: Pace = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.capabilities = self.backend.capabilities()
        self.upload_slots = UploadSlots(
            settings.temp_upload_dir,
            settings.max_concurrent_uploads,
            settings.upload_slot_wait_seconds,
        )
        self.tokens = TokenRegistry(
            settings.auth_token.get_secret_value() if settings.auth_token else None,
            settings.tokens_file,
            int(settings.max_upload_bytes),
        )
        self.gatekeeper = Gatekeeper(
            self.tokens,
            AuthBrake(settings.auth_failures_per_minute, self.shared),
            Allowances(self.shared),
            int(settings.max_upload_bytes),
            settings.ticket_secret.get_secret_value() if settings.ticket_secret else None,
        )
        self.pace = Pace(settings.client_idle_timeout_seconds, settings.client_min_bytes_per_second)

    def backend_for(self, service: str | None) -> StorageBackend:
        """The backend a request names; None means the configured one."""
        if service is None or service.strip().lower() == self.backend.name:
            return self.backend
        raise UNSUPPORTED_SERVICE(
            f"unsupported service {service[:40]!r}; supported services: {self.backend.name}"
        )


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

TokenHeader = Annotated[str | None, Header(description="A token or an upload ticket.")]
BearerHeader = Annotated[
    str | None, Header(description="Alternatively: `Bearer <token or ticket>`.")
]
ServiceParam = Annotated[
    str | None,
    Query(description="Storage backend to use, e.g. `mega`; omitted means the configured one."),
]


def offered_credential(x_auth_token: str | None, authorization: str | None) -> str | None:
    """The token or ticket a request carries: ``X-Auth-Token``, else a bearer token."""
    if x_auth_token is None and authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip()
    return x_auth_token


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def authenticate(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
) -> Caller:
    """The caller, for routes that need one but are not uploads."""
    offered = offered_credential(x_auth_token, authorization)
    # The brake's counts may live in Redis: never wait for it on the event loop.
    caller = await to_thread.run_sync(
        services.gatekeeper.identify, offered, client_address(request)
    )
    token_name.set(caller.name)
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


@dataclass
class Admission:
    """One upload, admitted: decided once, here, and used by every later step.

    ``limit`` is the largest file this request may store (413 beyond it); ``declared``
    the file's size when the request states it (a raw body's Content-Length); ``grant``
    what it holds of the caller's allowances (and meters undeclared bytes against the
    quota as they arrive); ``slot`` its place among the instance's concurrent uploads.
    """

    caller: Caller
    backend: StorageBackend
    limit: int
    declared: int | None
    grant: Grant
    slot: Slot
    filename: str | None = None

    def finish(self, stored: bool, size: int) -> None:
        """The answer was sent: free the slot and settle the allowances (blocking)."""
        self.slot.release()
        self.grant.settle(stored, size)


async def admit_upload(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
    service: ServiceParam = None,
) -> Admission:
    """Admit an upload: a valid token or ticket that may use this service and name, a
    declared size within its limit, a free upload slot, and room in its allowances."""
    state = request.scope.setdefault("state", {})
    multipart = request.method == "POST"
    record = start_upload_record(state, services.backend.name, "multipart" if multipart else "raw")
    caller = await authenticate(request, services, x_auth_token, authorization)
    record.token = caller.name
    backend = services.backend_for(service)
    gate = services.gatekeeper
    filename = None
    if not multipart:
        filename = filename_or_default(request.path_params.get("filename"))
        record.filename = filename
    gate.check_target(caller, backend.name, filename)
    limit = gate.file_limit(caller)
    length = _content_length(request)
    if length is not None and length > limit + (MULTIPART_OVERHEAD if multipart else 0):
        raise UploadTooLarge(limit)
    # A multipart body's length includes its framing: the file's size is not declared.
    declared = None if multipart else length
    slot = await services.upload_slots.acquire()
    try:
        grant = await to_thread.run_sync(gate.take, caller, declared)
    except BaseException as refused:
        slot.release()
        count_refusal(caller, refused)
        raise
    admission = Admission(caller, backend, limit, declared, grant, slot, filename)
    _account(record, admission)
    return admission


def _content_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise InvalidLength("the Content-Length header is not a number")
    return int(declared)


def count_refusal(caller: Caller, refused: BaseException) -> None:
    """Count a refusal by one of the caller's limits (for /metrics)."""
    limit = getattr(refused, "limit", "")
    if isinstance(limit, str) and limit:
        metrics.limit_rejected(caller.name, limit)


def _account(record: UploadRecord, admission: Admission) -> None:
    record.finish = admission.finish
    record.admitted = True
    record.started_admitted = time.monotonic()
    metrics.upload_started()


AdmissionDep = Annotated[Admission, Depends(admit_upload)]
