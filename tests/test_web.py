"""What the pages are served with: CSP, the client settings, the ShareX config, CORS."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import ConfigError, load_settings
from tests.conftest import ROOT, tokens_toml

WEB = ROOT / "app" / "web"


def test_page_is_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_page_has_no_inline_code_and_only_local_assets(make_client) -> None:
    # As served, with the public address the ShareX config link needs.
    client = make_client(public_base_url="http://testserver")
    for name in ["index.html", "docs.html"]:
        html = (WEB / name).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), name
        assert "<style" not in html and " style=" not in html, name
        assert not re.search(r"\son[a-z]+=", html), name  # no inline event handlers
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert asset.startswith("/"), (name, asset)
            assert client.get(asset).status_code == 200, asset


def test_page_stays_small_enough_to_read(client: TestClient) -> None:
    lines = sum(
        len((WEB / name).read_text().splitlines())
        for name in ["index.html", "static/upload.js", "static/upload.css"]
    )
    assert lines < 500


def test_config_tells_the_page_the_limit_and_services(make_client) -> None:
    client = make_client(max_upload_bytes="5MiB")
    config = client.get("/config").json()
    assert config["max_upload_bytes"] == 5 * 1024 * 1024
    assert config["services"] == ["local"] and config["default_service"] == "local"
    assert config["tickets"] is False


def test_config_tells_a_caller_its_own_limit(make_client, tmp_path: Path) -> None:
    small = "small-token-5e4d3c2b1a"
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(small={"secret": small, "max_upload_bytes": "1MiB"}))
    client = make_client(max_upload_bytes="5MiB", tokens_file=path)
    assert client.get("/config").json()["max_upload_bytes"] == 5 * 1024 * 1024
    mine = client.get("/config", headers={"X-Auth-Token": small})
    assert mine.json()["max_upload_bytes"] == 1024 * 1024
    wrong = client.get("/config", headers={"X-Auth-Token": "not-a-token-0000000000"})
    assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_token"


def test_config_says_tickets_are_in_use_when_they_can_be_signed(make_client) -> None:
    client = make_client(ticket_secret=secrets.token_urlsafe(32))
    assert client.get("/config").json()["tickets"] is True


def test_sharex_config_never_holds_the_token(make_client, token: str) -> None:
    client = make_client(public_base_url="https://files.example.org")
    answer = client.get("/sharex.sxcu", params={"token": token}, headers={"X-Auth-Token": token})
    assert answer.status_code == 200
    assert token not in answer.text
    assert "attachment" in answer.headers["content-disposition"]
    config = answer.json()
    assert config["RequestURL"] == "https://files.example.org/upload"
    assert config["Body"] == "MultipartFormData" and config["FileFormName"] == "file"
    assert config["Headers"] == {"X-Auth-Token": ""}
    assert config["URL"] == "{json:link}"


def preflight(client: TestClient, origin: str):
    return client.options(
        "/upload",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-auth-token",
        },
    )


def test_cors_is_off_by_default(client: TestClient, auth: dict) -> None:
    assert "access-control-allow-origin" not in preflight(client, "https://a.example").headers
    answer = client.put(
        "/files/x.txt", headers={**auth, "Origin": "https://a.example"}, content=b"x"
    )
    assert "access-control-allow-origin" not in answer.headers


def test_cors_origins_lets_only_the_named_sites_upload(make_client, auth: dict) -> None:
    client = make_client(cors_origins="https://a.example, https://b.example")
    allowed = preflight(client, "https://b.example")
    assert allowed.headers["access-control-allow-origin"] == "https://b.example"
    assert "x-auth-token" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in preflight(client, "https://evil.example").headers
    answer = client.put(
        "/files/x.txt", headers={**auth, "Origin": "https://a.example"}, content=b"x"
    )
    assert answer.headers["access-control-allow-origin"] == "https://a.example"
    assert "retry-after" in answer.headers["access-control-expose-headers"].lower()


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("AUTH_TOKEN", token)
    monkeypatch.setenv("STORAGE_BACKEND", "local")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example,https://b.example/")
    origins = load_settings(_env_file=None).serving.cors_origins
    assert origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("CORS_ORIGINS", "*")
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_settings(_env_file=None)
