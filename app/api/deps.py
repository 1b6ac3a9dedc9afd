"""What routes depend on: the running services and the token check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Header, Request

from app.api.auth_brake import AuthBrake
from app.api.errors import ApiError
from app.config import Settings
from app.spool import Spool
from app.storage.base import StorageBackend

RETRY_AFTER_BUSY = "5"


@dataclass
class Services:
    """Everything a request may use, built once per app by ``create_app``."""

    settings: Settings
    backend: StorageBackend
    spool: Spool
    upload_slots: anyio.Semaphore = field(init=False)
    auth_brake: AuthBrake = field(init=False)

    def __post_init__(self) -> None:
        self.upload_slots = anyio.Semaphore(self.settings.max_concurrent_uploads)
        self.auth_brake = AuthBrake(self.settings.auth_failures_per_minute)

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


def require_token(
    request: Request,
    services: ServicesDep,
    x_auth_token: Annotated[str | None, Header(description="The service's auth token.")] = None,
    authorization: Annotated[
        str | None, Header(description="Alternatively: `Bearer <token>`.")
    ] = None,
) -> None:
    """401 when no token is sent, 403 when it is wrong (429 after too many from one
    address, see auth_brake); compared in constant time."""
    offered = x_auth_token
    if offered is None and authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            offered = credentials.strip()
    if not offered:
        raise ApiError(
            401, "missing_token", "an auth token is required", {"WWW-Authenticate": "Bearer"}
        )
    address = request.client.host if request.client else ""
    services.auth_brake.check(address)  # 429 after too many wrong tokens from here
    expected = services.settings.auth_token.get_secret_value().encode()
    if not hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), expected):
        services.auth_brake.failed(address)
        raise ApiError(403, "invalid_token", "the auth token is not valid")


Authorized = Depends(require_token)
