"""What routes depend on: the running services, who is calling, and upload admission."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Header, Query, Request

from app import metrics
from app.access.admission import Caller, Gatekeeper
from app.access.brake import AuthBrake
from app.access.errors import LimitReached
from app.access.last_good_tokens import LastGoodTokens
from app.access.limits import Allowances, Grant
from app.access.tokens import TokenRegistry
from app.api.context import UploadSummary, start_upload_summary
from app.api.errors import NOT_SUPPORTED, UNSUPPORTED_SERVICE
from app.config import Settings
from app.intake.body import Pace
from app.intake.digests import POST_HEADER, PUT_HEADER, declared_sha256
from app.intake.errors import InvalidLength, UploadTooLarge
from app.intake.filenames import filename_or_default
from app.intake.multipart import MULTIPART_OVERHEAD
from app.intake.slots import Slot, UploadSlots
from app.intake.spool import Spool
from app.logging_setup import token_name
from app.records import Records, SpaceTracker, build_records
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
    # Under gunicorn: the tokens file as last accepted by any process of the instance.
    last_good_tokens: LastGoodTokens | None = None
    upload_slots: UploadSlots = field(init=False)
    tokens: TokenRegistry = field(init=False)
    gatekeeper: Gatekeeper = field(init=False)
    pace: Pace = field(init=False)
    space: SpaceTracker = field(init=False)
    records: Records | None = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.capabilities = self.backend.capabilities()
        self.upload_slots = UploadSlots(
            settings.intake.temp_upload_dir,
            settings.intake.max_concurrent_uploads,
            settings.intake.upload_slot_wait_seconds,
        )
        self.tokens = TokenRegistry(
            settings.access.auth_token.get_secret_value() if settings.access.auth_token else None,
            settings.access.tokens_file,
            int(settings.access.max_upload_bytes),
            self.last_good_tokens,
        )
        self.gatekeeper = Gatekeeper(
            self.tokens,
            AuthBrake(settings.access.auth_failures_per_minute, self.shared),
            Allowances(self.shared),
            int(settings.access.max_upload_bytes),
            settings.access.ticket_secret.get_secret_value()
            if settings.access.ticket_secret
            else None,
            settings.records.default_expiry_days,
        )
        self.pace = Pace(
            settings.intake.client_idle_timeout_seconds, settings.intake.client_min_bytes_per_second
        )
        self.space = SpaceTracker(self.capabilities.space)
        self.records = build_records(
            settings, self.backend, self.capabilities, self.shared, self.space
        )

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
MtimeHeader = Annotated[
    int | None,
    Header(
        description="The file's own modification time, Unix seconds: MEGA's apps show it "
        "as the file's date (in its fingerprint `c`); local downloads as Last-Modified.",
        ge=0,
        le=2**40,  # MEGA's fingerprint keeps it in at most 8 bytes
    ),
]
ServiceParam = Annotated[
    str | None,
    Query(description="Storage backend to use, e.g. `mega`; omitted means the configured one."),
]
ExpiresParam = Annotated[
    float | None,
    Query(
        gt=0,
        description="Seconds until this upload expires and is deleted (at most the token's "
        "max_expiry_days); omitted: the token's or the service's default, else kept.",
    ),
]
ReprDigestHeader = Annotated[
    str | None,
    Header(
        alias=PUT_HEADER,
        description="`PUT` only: the file's SHA-256 as RFC 9530 `sha-256=:<base64>:`, checked "
        "against the bytes received (400 `digest_mismatch`, nothing stored).",
    ),
]
FileDigestHeader = Annotated[
    str | None,
    Header(
        alias=POST_HEADER,
        description="`POST` only (the body is a form, not the file): the file's SHA-256, "
        "`sha-256=:<base64>:`, checked like Repr-Digest.",
    ),
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
    return await _identify(request, services, x_auth_token, authorization, continuing=False)


async def authenticate_continuing(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
) -> Caller:
    """The caller of a request that continues an upload begun earlier (tus): a ticket
    that began it continues it past the ticket's own expiry (``Gatekeeper.identify``)."""
    return await _identify(request, services, x_auth_token, authorization, continuing=True)


async def _identify(
    request: Request,
    services: Services,
    x_auth_token: str | None,
    authorization: str | None,
    continuing: bool,
) -> Caller:
    offered = offered_credential(x_auth_token, authorization)
    # The brake's counts may live in Redis: never wait for it on the event loop.
    caller = await to_thread.run_sync(
        services.gatekeeper.identify, offered, client_address(request), continuing
    )
    token_name.set(caller.name)
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]
ContinuingCallerDep = Annotated[Caller, Depends(authenticate_continuing)]


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
    mtime: int | None = None
    # Seconds until the upload expires (None: kept); the file's SHA-256 as the client
    # declared it (hex), checked against the bytes received.
    expires_in: int | None = None
    digest: str | None = None

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
    x_file_mtime: MtimeHeader = None,
    expires_in: ExpiresParam = None,
    repr_digest: ReprDigestHeader = None,
    file_digest: FileDigestHeader = None,
) -> Admission:
    """Admit an upload: a valid token or ticket that may use this service and name, a
    declared size within its limit and within the storage's free space, a free upload
    slot, and room in its allowances."""
    state = request.scope.setdefault("state", {})
    multipart = request.method == "POST"
    summary = start_upload_summary(
        state, services.backend.name, "multipart" if multipart else "raw"
    )
    # Named before anything can refuse it, so that the summary of a refusal says which file.
    filename = None if multipart else filename_or_default(request.path_params.get("filename"))
    summary.name = filename
    caller = await authenticate(request, services, x_auth_token, authorization)
    summary.token = caller.name
    backend = services.backend_for(service)
    length = _content_length(request)
    digest = (
        declared_sha256(file_digest, POST_HEADER)
        if multipart
        else declared_sha256(repr_digest, PUT_HEADER)
    )
    # A multipart body's length includes its framing: the file is at least the body less
    # the room allowed for the rest, and its exact size is not declared.
    overhead = MULTIPART_OVERHEAD if multipart else 0
    limit, expires = decide_upload(
        services, caller, backend, filename, length, overhead, expires_in, digest
    )
    declared = None if multipart else length
    slot = await services.upload_slots.acquire()
    try:
        grant = await take_allowances(services, caller, declared)
    except BaseException:
        slot.release()
        raise
    admission = Admission(
        caller,
        backend,
        limit,
        declared,
        grant,
        slot,
        filename,
        x_file_mtime,
        expires,
        digest,
    )
    _account(summary, admission)
    return admission


def decide_upload(
    services: Services,
    caller: Caller,
    backend: StorageBackend,
    filename: str | None,
    length: int | None,
    overhead: int = 0,
    expires_in: int | None = None,
    digest: str | None = None,
) -> tuple[int, int | None]:
    """What one upload of ``caller`` may be, decided before a byte of it is read, for
    every way a file arrives (POST, PUT, tus): the largest file it may store, and when
    it expires. ``length`` is the declared size (None: not known), ``overhead`` what of it
    is not the file (multipart framing)."""
    gate = services.gatekeeper
    gate.check_target(caller, backend.name, filename)
    limit = gate.file_limit(caller)
    if length is not None:
        if length > limit + overhead:
            raise UploadTooLarge(limit)
        services.space.check(length - overhead)  # a file that cannot fit: refused now
    if services.records is None and (expires_in is not None or digest is not None):
        # Expiry and digest checks rest on records: never accept what would be ignored.
        raise NOT_SUPPORTED(
            f"the storage backend {backend.name!r} keeps no records of uploads: "
            "they cannot expire (expires_in) or be checked against a declared digest"
        )
    return limit, gate.expiry(caller, expires_in)


async def take_allowances(services: Services, caller: Caller, declared: int | None) -> Grant:
    """The upload, taken from the caller's allowances (a refusal takes nothing)."""
    try:
        return await to_thread.run_sync(services.gatekeeper.take, caller, declared)
    except BaseException as refused:
        if isinstance(refused, LimitReached):
            metrics.limit_rejected(caller.name, refused.limit)
        raise


def _content_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise InvalidLength("the Content-Length header is not a number")
    return int(declared)


def _account(summary: UploadSummary, admission: Admission) -> None:
    summary.finish = admission.finish
    summary.admitted = True
    metrics.upload_started()


AdmissionDep = Annotated[Admission, Depends(admit_upload)]
