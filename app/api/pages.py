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
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from app import __version__
from app.api.deps import ServicesDep
from app.api.errors import ApiError, catalogue_responses
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
CORS_REQUEST_HEADERS = ["Authorization", "X-Auth-Token", "Content-Type"]
CORS_EXPOSED_HEADERS = ["Retry-After"]

router = APIRouter(tags=["pages"])


class ClientConfig(BaseModel):
    """What the upload page (or any client) needs to know before sending a file."""

    version: str
    services: list[str] = Field(description="Values accepted by the `service` parameter.")
    default_service: str
    max_upload_bytes: int = Field(description="Largest file accepted, in bytes.")
    tickets: bool = Field(description="Whether upload tickets can be used in place of a token.")


def tickets_enabled(settings: Settings) -> bool:
    """Upload tickets are in use when the service has a secret to sign them with."""
    # Read by name so that this page keeps working whether or not tickets are built in.
    return bool(getattr(settings, "ticket_secret", None))


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
    summary="Settings a client needs: services, size limit, whether tickets are in use",
)
async def client_config(services: ServicesDep) -> ClientConfig:
    name = services.backend.name
    return ClientConfig(
        version=__version__,
        services=[name],
        default_service=name,
        max_upload_bytes=services.spool.limit,
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
    responses={200: {"content": {"application/json": {}}}},
)
async def sharex_config(services: ServicesDep) -> JSONResponse:
    # The page puts the user's token into this file: built from the request's Host header
    # (which any client, or a poisoned cache in between, chooses), it could send the token
    # elsewhere. So only from PUBLIC_BASE_URL, and never stored by a cache.
    base = services.settings.public_base_url
    if base is None:
        raise ApiError(
            501,
            "sharex_unavailable",
            "no ShareX config: the service's public address is not configured (PUBLIC_BASE_URL)",
            {"Cache-Control": "no-store"},
        )
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
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every operation's errors taken from the error catalogue."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = {
                status: response
                for status, response in operation["responses"].items()
                if status[0] not in "45"
            }
            responses.update(catalogue_responses(_scopes(path, operation)))
            operation["responses"] = responses
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    # FastAPI's own 422 shapes are replaced by ErrorBody everywhere.
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def _scopes(path: str, operation: dict[str, Any]) -> set[str]:
    """Which catalogue scopes apply to an operation, read from the operation itself."""
    scopes = set()
    parameters = operation.get("parameters", [])
    tags = operation.get("tags", [])
    if _can_fail_validation(operation):
        scopes.add("params")
    if any(p["in"] == "header" and p["name"].lower() == "x-auth-token" for p in parameters):
        scopes.add("token")
    if "uploads" in tags:
        scopes.update({"upload", "caller"})
    if "tickets" in tags:
        scopes.update({"tickets", "caller"})
    if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
        scopes.add("multipart")
    if "downloads" in tags:
        scopes.add("download")
    if path == "/ready":
        scopes.add("ready")
    if path == "/sharex.sxcu":
        scopes.add("sharex")
    return scopes


def _can_fail_validation(operation: dict[str, Any]) -> bool:
    """A JSON body or a parameter that is not a plain string can be refused with 422."""
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        return True
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        types = {part.get("type") for part in schema.get("anyOf", [schema])}
        if not types <= {"string", "null"}:
            return True
    return False
