"""The OpenAPI document tells the truth: every error the code can answer is in the error
catalogue, and each operation documents the errors it really returns, with examples."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.errors import CATALOGUE, STORAGE_ERRORS
from tests.conftest import ROOT

APP = ROOT / "app"


def answered_errors() -> set[tuple[int, str]]:
    """Every (status, code) pair written literally anywhere in the application: as the
    first two arguments of a call (``ApiError(403, "invalid_token", ...)``,
    ``error_response(503, "not_ready", ...)``, any other error built the same way) or as
    an error class's ``status`` and ``code``."""
    found = set()
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                # An error class carrying its answer: ``status = 401`` and ``code = "..."``.
                fields = {
                    target.id: statement.value
                    for statement in node.body
                    if isinstance(statement, ast.Assign)
                    for target in statement.targets
                    if isinstance(target, ast.Name)
                }
                status, code = fields.get("status"), fields.get("code")
            elif isinstance(node, ast.Call) and len(node.args) >= 2:
                status, code = node.args[0], node.args[1]
            else:
                continue
            if (
                isinstance(status, ast.Constant)
                and isinstance(status.value, int)
                and 400 <= status.value < 600
                and isinstance(code, ast.Constant)
                and isinstance(code.value, str)
                and re.fullmatch(r"[a-z][a-z0-9_]*", code.value)
            ):
                found.add((status.value, code.value))
    return found


def test_every_error_the_code_answers_with_is_in_the_catalogue() -> None:
    catalogued = {(entry.status, entry.code) for entry in CATALOGUE}
    answered = answered_errors() | {(status, code) for _, status, code in STORAGE_ERRORS}
    assert len(answered) > 15  # the scan sees the code base
    missing = sorted(answered - catalogued)
    assert missing == [], f"add these to CATALOGUE in app/api/errors.py: {missing}"


def test_catalogue_codes_are_unique() -> None:
    codes = [entry.code for entry in CATALOGUE]
    assert len(codes) == len(set(codes))


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
    for path in ["/health", "/ping", "/status", "/", "/config", "/sharex.sxcu"]:
        statuses = set(documented(app_client, "GET", path))
        assert "200" in statuses and "500" in statuses, path
        assert not statuses & {"401", "403", "413", "415", "503"}, (path, statuses)
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
