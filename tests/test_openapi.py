"""The OpenAPI document tells the truth: every error the code can answer is declared once
in the error catalogue, and each operation documents the errors it really returns, with
examples."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access import errors as access_errors
from app.api import errors
from app.api.errors import CATALOGUE, DOMAIN_ERRORS, ErrorKind, kind_of
from app.intake import errors as intake_errors
from app.storage import base as storage_base
from app.storage.base import StorageFull, StorageTimeout
from tests.conftest import ROOT

APP = ROOT / "app"


def _defined_exceptions(module: object) -> list[type[BaseException]]:
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize("module", [access_errors, intake_errors, storage_base])
def test_every_domain_error_is_declared_in_the_catalogue(module: object) -> None:
    """Each error class of the layers below has its own line in DOMAIN_ERRORS: a new
    class without one would be answered as its base class, silently."""
    classes = _defined_exceptions(module)
    assert len(classes) >= 5
    undeclared = [
        cls.__name__
        for cls in classes
        if cls not in DOMAIN_ERRORS
        and cls.__name__ not in {"AccessError", "IntakeError", "LimitReached", "StartupError"}
    ]
    assert undeclared == [], f"map these in app/api/errors.py DOMAIN_ERRORS: {undeclared}"


def test_no_error_code_is_written_outside_the_catalogue() -> None:
    """Codes live in app/api/errors.py only: everything else raises a kind by name or a
    domain error, so a code cannot drift from its documentation."""
    codes = {kind.code for kind in CATALOGUE}
    found = []
    for path in APP.rglob("*.py"):
        if path == APP / "api" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in codes:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []


def test_every_catalogue_entry_can_be_answered() -> None:
    """No dead entries: each kind is the target of a domain error or raised by name."""
    sources = "\n".join(path.read_text() for path in APP.rglob("*.py"))
    mapped = set(DOMAIN_ERRORS.values())
    names = {name for name, value in vars(errors).items() if isinstance(value, ErrorKind)}
    unused = [
        name for name in names if getattr(errors, name) not in mapped and sources.count(name) < 2
    ]
    assert unused == []


def test_domain_errors_map_by_their_nearest_class() -> None:
    class Subclassed(StorageFull):
        pass

    assert kind_of(Subclassed("full")) is errors.STORAGE_FULL
    assert kind_of(StorageTimeout("slow")) is errors.STORAGE_TIMEOUT
    assert kind_of(ValueError("unrelated")) is None


def test_catalogue_codes_are_unique_and_scopes_known() -> None:
    codes = [entry.code for entry in CATALOGUE]
    assert len(codes) == len(set(codes))
    known = set(typing.get_args(errors.Scope))
    assert all(entry.scopes <= known for entry in CATALOGUE)


@pytest.fixture
def app_client(make_client) -> TestClient:
    return make_client(max_upload_bytes="1KiB")


def documented(client: TestClient, method: str, path: str) -> dict:
    return client.get("/openapi.json").json()["paths"][path][method.lower()]["responses"]


# Requests that really fail, and the operation (as documented) that answered them.
FAILURES = [
    ("POST", "/upload", "/upload", {}, None, "missing_token"),
    (
        "POST",
        "/upload",
        "/upload",
        {"X-Auth-Token": "wrong-token-value-123"},
        None,
        "invalid_token",
    ),
    ("POST", "/upload", "/upload", "auth", b"not multipart", "unsupported_media_type"),
    ("POST", "/upload?service=dropbox", "/upload", "auth", None, "unsupported_service"),
    ("PUT", "/files/big.bin", "/files/{filename}", "auth", b"x" * 4096, "too_large"),
    ("PUT", "/files/a?service=dropbox", "/files/{filename}", "auth", b"x", "unsupported_service"),
    ("GET", "/files/nohandle/x.txt", "/files/{handle}/{filename}", {}, None, "not_found"),
    ("PATCH", "/tus/x", "/tus/{upload_id}", {}, b"x", "tus_version_unsupported"),
    ("POST", "/tus/", "/tus/", {"Tus-Resumable": "1.0.0"}, None, "missing_token"),
]


@pytest.mark.parametrize(("method", "url", "path", "headers", "body", "code"), FAILURES)
def test_each_failure_is_documented_on_its_operation(
    app_client: TestClient, auth: dict, method: str, url: str, path: str, headers, body, code: str
) -> None:
    headers = auth if headers == "auth" else headers
    response = app_client.request(method, url, headers=headers, content=body)

    assert response.json()["code"] == code
    responses = documented(app_client, method, path)
    assert str(response.status_code) in responses, f"{response.status_code} not documented"
    examples = responses[str(response.status_code)]["content"]["application/json"]["examples"]
    assert code in examples


def test_multipart_without_a_file_is_documented_as_422(app_client: TestClient, auth) -> None:
    response = app_client.post("/upload", headers=auth, files={"other": ("a.txt", b"a")})
    assert (response.status_code, response.json()["code"]) == (422, "missing_file")
    assert "missing_file" in str(documented(app_client, "POST", "/upload")["422"])


def test_busy_answers_document_retry_after(app_client: TestClient) -> None:
    upload = documented(app_client, "PUT", "/files/{filename}")
    assert "Retry-After" in upload["503"]["headers"]
    assert "too_many_uploads" in upload["503"]["content"]["application/json"]["examples"]
    assert "503" in documented(app_client, "GET", "/ready")


def test_operations_document_only_errors_they_can_return(app_client: TestClient) -> None:
    # No token, no upload: the probes and pages cannot answer 401, 403, 413 or 503.
    for path in ["/health", "/ping", "/status", "/", "/sharex.sxcu"]:
        statuses = set(documented(app_client, "GET", path))
        assert "200" in statuses and "500" in statuses, path
        assert not statuses & {"401", "403", "413", "415", "503"}, (path, statuses)
    # /config takes a token only to tell the caller its own limit.
    statuses = set(documented(app_client, "GET", "/config"))
    assert "403" in statuses and not statuses & {"413", "415", "503"}, statuses
    # FastAPI's generic validation error is replaced by the service's error body.
    schemas = app_client.get("/openapi.json").json()["components"]["schemas"]
    assert "HTTPValidationError" not in schemas


def test_every_route_is_documented_with_examples(app_client: TestClient) -> None:
    document = app_client.get("/openapi.json").json()
    paths = document["paths"]
    for route in ["/upload", "/files/{filename}", "/files/{handle}/{filename}", "/ready"]:
        assert route in paths
    assert {"/", "/config", "/sharex.sxcu"} <= set(paths)
    upload_ok = document["components"]["schemas"]["UploadResult"]
    assert upload_ok["examples"][0]["link"].startswith("https://mega.nz/file/")
    # The handle differs from the one in a MEGA link: the document says why.
    assert "public handle in the `link`" in upload_ok["properties"]["handle"]["description"]


def test_docs_load_only_from_the_service(app_client: TestClient) -> None:
    page = app_client.get("/docs")
    assert page.status_code == 200
    assert "script-src 'self';" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        assert app_client.get(asset).status_code == 200, asset
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    assert app_client.get("/redoc").status_code == 404


def test_swagger_assets_come_from_the_installed_package() -> None:
    import fastapi_offline

    from app.api.pages import SWAGGER_ASSETS

    assert Path(fastapi_offline.__file__).parent in SWAGGER_ASSETS.parents
    assert (SWAGGER_ASSETS / "swagger-ui-bundle.js").stat().st_size > 100_000
