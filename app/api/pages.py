"""What people open in a browser: the upload page, its settings, the docs and a ShareX config.

Everything the pages load comes from this service (no CDN), under a Content-Security-Policy
that allows no inline script, so an injected ``<script>`` could not run on our origin.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fastapi_offline
from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from app import __version__
from app.api import tus
from app.api.deps import BearerHeader, ServicesDep, TokenHeader, client_address, offered_credential
from app.api.errors import SHAREX_UNAVAILABLE, error_responses
from app.api.models import ErrorBody
from app.config import Settings

WEB = Path(__file__).resolve().parent.parent / "web"
# Swagger UI's bundle, kept current by a maintained package instead of a CDN.
SWAGGER_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
_CSP_BASE = (
    "default-src 'none'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_CSP = f"{_CSP_BASE}; style-src 'self'"
# Swagger UI sets style attributes from its script; scripts stay 'self' only.
DOCS_CSP = f"{_CSP_BASE}; style-src 'self' 'unsafe-inline'"
# Headers a browser page may send and read across origins when CORS_ORIGINS allows it.
CORS_REQUEST_HEADERS = [
    "Authorization",
    "X-Auth-Token",
    "Content-Type",
    "Repr-Digest",
    "Paimon-File-Digest",
]
CORS_EXPOSED_HEADERS = ["Retry-After"]

router = APIRouter(tags=["pages"])


class ClientConfig(BaseModel):
    """What the upload page (or any client) needs to know before sending a file."""

    version: str
    services: list[str] = Field(description="Values accepted by the `service` parameter.")
    default_service: str
    max_upload_bytes: int = Field(
        description="Largest file accepted, in bytes: for the caller when it sends its token "
        "or ticket, else the service's limit."
    )
    tickets: bool = Field(description="Whether upload tickets can be used in place of a token.")


def tickets_enabled(settings: Settings) -> bool:
    """Upload tickets are in use when the service has a secret to sign them with."""
    return settings.access.ticket_secret is not None


def _page(name: str, csp: str) -> HTMLResponse:
    return HTMLResponse(
        _read(name),
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


@cache
def _read(name: str) -> str:
    return (WEB / name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, summary="The upload page")
async def upload_page() -> HTMLResponse:
    return _page("index.html", PAGE_CSP)


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs_page() -> HTMLResponse:
    return _page("docs.html", DOCS_CSP)


@router.get(
    "/config",
    response_model=ClientConfig,
    responses=error_responses("token", "caller"),
    summary="Settings a client needs: services, size limit, whether tickets are in use",
)
async def client_config(
    request: Request,
    services: ServicesDep,
    x_auth_token: TokenHeader = None,
    authorization: BearerHeader = None,
) -> ClientConfig:
    name = services.backend.name
    gate = services.gatekeeper
    limit = gate.max_upload_bytes
    offered = offered_credential(x_auth_token, authorization)
    if offered:
        # The caller's own limit, so a client can refuse a file before sending a byte.
        caller = await to_thread.run_sync(gate.identify, offered, client_address(request))
        limit = gate.file_limit(caller)
    return ClientConfig(
        version=__version__,
        services=[name],
        default_service=name,
        max_upload_bytes=limit,
        tickets=tickets_enabled(services.settings),
    )


@router.get(
    "/sharex.sxcu",
    summary="A ShareX custom uploader for this service (without the token)",
    description=(
        "The token is never embedded: ShareX asks for nothing, so paste your token or "
        "ticket into the `X-Auth-Token` header in ShareX, or download the config from the "
        "upload page, which adds it in the browser without sending it anywhere. The "
        "address in it is `PUBLIC_BASE_URL`, never the request's `Host`; without that "
        "setting there is no config."
    ),
    responses={200: {"content": {"application/json": {}}}, **error_responses("sharex")},
)
async def sharex_config(services: ServicesDep) -> JSONResponse:
    # The page puts the user's token into this file: built from the request's Host header
    # (which any client, or a poisoned cache in between, chooses), it could send the token
    # elsewhere. So only from PUBLIC_BASE_URL, and never stored by a cache.
    base = services.settings.public_base_url
    if base is None:
        # A 501 is heuristically cacheable: this one must not outlive the setting.
        refused = SHAREX_UNAVAILABLE.response(SHAREX_UNAVAILABLE.example)
        refused.headers["Cache-Control"] = "no-store"
        return refused
    host = urlsplit(base).hostname or "paimon"
    config: dict[str, Any] = {
        "Version": "15.0.0",
        "Name": f"Paimon-server ({host})",
        "DestinationType": "ImageUploader, TextUploader, FileUploader",
        "RequestMethod": "POST",
        "RequestURL": f"{base}/upload",
        "Headers": {"X-Auth-Token": ""},
        "Body": "MultipartFormData",
        "FileFormName": "file",
        "URL": "{json:link}",
        "ErrorMessage": "{json:message}",
    }
    return JSONResponse(
        config,
        headers={
            "Content-Disposition": f'attachment; filename="paimon-{host}.sxcu"',
            "Cache-Control": "no-store",
        },
    )


def install_web(app: FastAPI, settings: Settings) -> None:
    """Add the pages, their assets, the offline docs, CORS and the generated error docs."""
    app.include_router(router)
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_ASSETS), name="swagger")
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    if settings.serving.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.serving.cors_origins,
            # tus clients (tus-js-client in a page) send and read their own headers.
            allow_methods=["GET", "POST", "PUT", "PATCH", "HEAD", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS + tus.REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS + tus.EXPOSED_HEADERS,
            max_age=600,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every operation's errors from the error catalogue: those
    its route declares (``error_responses``), the ones any operation can answer, and the
    service's error body in place of FastAPI's own validation error."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    everywhere = error_responses()
    invalid = error_responses("params")["422"]
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            if "HTTPValidationError" in str(responses.get("422", "")):
                responses["422"] = invalid
            for status, response in everywhere.items():
                responses.setdefault(str(status), response)
            operation["responses"] = dict(sorted(responses.items()))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema
