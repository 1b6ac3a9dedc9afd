"""Probes, service information, OpenAPI docs and settings validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import ConfigError, load_settings
from tests.conftest import ROOT


def test_ping_keeps_the_existing_answer(client: TestClient) -> None:
    assert client.get("/ping").json() == {"message": "Server running"}


def test_status_names_version_and_services_without_paths_or_secrets(
    client: TestClient, token: str, tmp_path: Path
) -> None:
    response = client.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"]
    assert body["services"] == ["local"]
    assert token not in response.text
    assert str(tmp_path) not in response.text


def test_health_needs_no_token_and_does_no_io(make_client) -> None:
    client = make_client()
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_is_200_when_the_backend_can_take_uploads(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_ready_is_503_with_a_reason_when_storage_is_unusable(
    make_client,
) -> None:
    client = make_client()
    # The storage directory disappears under the running service and a file takes its place.
    root = client.app.state.services.settings.local.storage_dir
    root.rmdir()
    root.write_bytes(b"")
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["code"] == "not_ready"
    assert "not writable" in response.json()["message"]
    assert response.headers["retry-after"].isdigit()
    assert str(root) not in response.text


def test_openapi_docs_describe_the_api(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ["/upload", "/files/{filename}", "/ping", "/status", "/health", "/ready"]:
        assert path in paths
    upload = paths["/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"401", "403", "413", "502", "503", "504", "507"} <= set(upload["responses"])
    names = {param["name"] for param in upload["parameters"]}
    assert {"service", "x-auth-token", "authorization"} <= names


def test_missing_token_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_TOKEN", raising=False)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None, storage_backend="local")
    assert "AUTH_TOKEN is not set" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"auth_token": "short"}, "AUTH_TOKEN"),
        ({"auth_token": "change-me-to-something-long"}, "AUTH_TOKEN"),
        ({"auth_token": "your-token-goes-here-1234"}, "AUTH_TOKEN"),
        ({"storage_backend": "s3"}, "STORAGE_BACKEND"),
        ({"max_upload_bytes": "lots"}, "MAX_UPLOAD_BYTES"),
        ({"max_upload_bytes": "0"}, "MAX_UPLOAD_BYTES"),
        ({"port": "99999"}, "PORT"),
        ({"mega_api_url": "ftp://x"}, "MEGA_API_URL"),
        ({"mega_folder": "a//b"}, "MEGA_FOLDER"),
        ({"mega_folder": "../up"}, "MEGA_FOLDER"),
        ({"log_level": "loud"}, "LOG_LEVEL"),
        ({"storage_backend": "mega", "mega_password": "hunter2-secret-pw"}, "MEGA_EMAIL"),
        ({"storage_backend": "mega", "mega_email": "a@b.c"}, "MEGA_PASSWORD"),
    ],
)
def test_bad_settings_name_the_variable_and_never_a_secret(
    overrides: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("MEGA_EMAIL", "MEGA_PASSWORD", "STORAGE_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    values = {"auth_token": "a-perfectly-random-token-1", "storage_backend": "local"}
    values.update(overrides)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None, **values)
    message = str(error.value)
    assert named in message
    assert "hunter2-secret-pw" not in message
    assert "\n" not in message


def test_on_render_the_public_address_is_the_services_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RENDER_EXTERNAL_URL", "https://paimon-server.onrender.com")
    monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
    given = {"auth_token": "a-perfectly-random-token-1", "storage_backend": "local"}
    settings = load_settings(_env_file=None, **given)
    assert settings.public_base_url == "https://paimon-server.onrender.com"
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://files.example.org")
    assert load_settings(_env_file=None, **given).public_base_url == "https://files.example.org"


def test_sizes_accept_units() -> None:
    settings = load_settings(
        _env_file=None,
        auth_token="a-perfectly-random-token-1",
        storage_backend="local",
        max_upload_bytes="2GiB",
        log_level="DEBUG",
    )
    assert settings.access.max_upload_bytes == 2 * 1024**3
    assert settings.serving.log_level == "debug"


def run_import(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Import server:app the way gunicorn and uvicorn do, in a clean environment."""
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); import server; server.app",
        ],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_start_without_a_token_stops_with_one_readable_line(tmp_path: Path) -> None:
    result = run_import({"STORAGE_BACKEND": "local"}, tmp_path)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "AUTH_TOKEN is not set" in lines[0]


def test_production_start_never_falls_back_to_local_disk(tmp_path: Path) -> None:
    result = run_import({"AUTH_TOKEN": "a-perfectly-random-token-1"}, tmp_path)
    assert result.returncode == 3
    assert "MEGA_EMAIL is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "AUTH_TOKEN=token-from-the-env-file-123\nSTORAGE_BACKEND=local\n"
        "PUBLIC_BASE_URL=http://localhost:8080\n"
        f"LOCAL_STORAGE_DIR={tmp_path / 'files'}\nTEMP_UPLOAD_DIR={tmp_path / 'spool'}\n"
    )
    result = run_import({}, tmp_path)
    assert result.returncode == 0, result.stderr
