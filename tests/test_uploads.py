"""Upload API through the real ASGI app with the local backend."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app.intake.filenames import DEFAULT_NAME
from app.intake.spool import SpoolUnusable
from app.storage.base import StorageFull, StorageTimeout, UpstreamRejected
from tests.standins import FailingBackend, FailingStreamBackend, GatedBackend


def spool_leftovers(client: TestClient) -> list[Path]:
    return list(client.app.state.services.spool.directory.iterdir())


def stored_files(client: TestClient) -> list[Path]:
    """The uploaded files (each in a folder of its own; records and locks are not files)."""
    root = client.app.state.services.settings.local.storage_dir
    if not root.exists():
        return []
    return [path for path in root.glob("*/*") if path.is_file() and len(path.parent.name) == 22]


def test_upload_answers_the_existing_contract_and_the_file_downloads_identically(
    client: TestClient, auth: dict[str, str]
) -> None:
    data = os.urandom(300_000)
    response = client.post(
        "/upload?service=local", headers=auth, files={"file": ("report.pdf", data)}
    )
    assert response.status_code == 200
    body = response.json()
    # The first five keys, in order and with these values, are what existing clients parse.
    assert list(body)[:5] == ["status", "message", "filename", "service", "link"]
    assert body["status"] == "success"
    assert body["message"] == "File uploaded successfully"
    assert body["filename"] == "report.pdf"
    assert body["service"] == "local"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["handle"] and body["handle"] in body["link"]
    download = client.get(body["link"])
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.headers["x-content-type-options"] == "nosniff"
    assert spool_leftovers(client) == []


def test_put_stores_the_raw_body_under_the_path_name(
    client: TestClient, auth: dict[str, str]
) -> None:
    data = b"raw bytes \x00\xff" * 1000
    response = client.put("/files/notes%20v2.txt", headers=auth, content=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "notes v2.txt"
    assert body["size"] == len(data)
    assert client.get(body["link"]).content == data


def test_bearer_token_is_accepted_like_x_auth_token(client: TestClient, token: str) -> None:
    response = client.put(
        "/files/a.txt", headers={"Authorization": f"Bearer {token}"}, content=b"x"
    )
    assert response.status_code == 200


def test_empty_file_is_stored(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/upload", headers=auth, files={"file": ("empty.bin", b"")})
    assert response.status_code == 200
    assert response.json()["size"] == 0
    assert client.get(response.json()["link"]).content == b""


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_token"),
        ({"X-Auth-Token": ""}, 401, "missing_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing_token"),
        ({"X-Auth-Token": "wrong"}, 403, "invalid_token"),
        ({"X-Auth-Token": "w" * 500}, 403, "invalid_token"),
        ({"Authorization": "Bearer wrong-token-of-some-length"}, 403, "invalid_token"),
    ],
)
def test_uploads_without_the_right_token_are_refused(
    client: TestClient, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.post("/upload", headers=headers, files={"file": ("a.txt", b"data")})
    assert response.status_code == status
    assert response.json() == {
        "status": "error",
        "message": response.json()["message"],
        "code": code,
    }
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert stored_files(client) == []
    assert spool_leftovers(client) == []


def test_non_ascii_token_is_refused_not_crashed(client: TestClient) -> None:
    response = client.put("/files/a.txt", headers={"X-Auth-Token": "tökén".encode()}, content=b"x")
    assert response.status_code == 403


def test_auth_is_checked_before_the_size_limit(client: TestClient) -> None:
    response = client.put(
        "/files/a.txt",
        headers={"X-Auth-Token": "wrong", "Content-Length": str(10**15)},
        content=b"",
    )
    assert response.status_code == 403


def test_unknown_service_is_a_400_naming_the_supported_ones(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.post(
        "/upload?service=dropbox", headers=auth, files={"file": ("a.txt", b"data")}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_service"
    assert "local" in response.json()["message"]
    response = client.post("/upload?service=mega", headers=auth, files={"file": ("a", b"d")})
    assert response.status_code == 400
    assert stored_files(client) == []


def test_upload_over_limit_is_rejected_from_content_length_before_reading(
    make_client, auth: dict[str, str]
) -> None:
    client = make_client(max_upload_bytes=1000)
    response = client.put(
        "/files/big.bin", headers={**auth, "Content-Length": "1001"}, content=b"x" * 1001
    )
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert stored_files(client) == []


def test_upload_over_limit_is_rejected_while_streaming(make_client, auth: dict[str, str]) -> None:
    client = make_client(max_upload_bytes=100_000)

    def body():  # no Content-Length: only counting while streaming can catch it
        for _ in range(50):
            yield b"y" * 10_000

    response = client.put("/files/big.bin", headers=auth, content=body())
    assert response.status_code == 413
    assert stored_files(client) == []
    assert spool_leftovers(client) == []


def test_multipart_over_limit_by_content_length_names_the_configured_limit(
    make_client, auth: dict[str, str]
) -> None:
    client = make_client(max_upload_bytes=100_000)
    response = client.post("/upload", headers=auth, files={"file": ("b.bin", b"z" * 200_000)})
    assert response.status_code == 413
    assert response.json()["message"] == "the file is larger than the limit of 100000 bytes"


def test_multipart_over_limit_is_rejected_while_streaming(
    make_client, auth: dict[str, str]
) -> None:
    client = make_client(max_upload_bytes=100_000)
    response = client.post("/upload", headers=auth, files={"file": ("b.bin", b"z" * 100_001)})
    assert response.status_code == 413
    assert spool_leftovers(client) == []
    exact = client.post("/upload", headers=auth, files={"file": ("b.bin", b"z" * 100_000)})
    assert exact.status_code == 200


BOUNDARY = "xYzZY"


def multipart(*parts: str) -> bytes:
    return (
        "".join(f"--{BOUNDARY}\r\n{part}\r\n" for part in parts) + f"--{BOUNDARY}--\r\n"
    ).encode()


def test_a_big_file_under_another_field_name_is_422_naming_the_field(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.post(
        "/upload", headers=auth, files={"upload": ("big.jpg", b"j" * (256 * 1024))}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "missing_file"
    assert "'file'" in response.json()["message"] and "'upload'" in response.json()["message"]
    assert stored_files(client) == []
    assert spool_leftovers(client) == []


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b'{"file": "x"}', 415, "unsupported_media_type"),
        ("multipart/form-data", b"--x\r\n", 400, "bad_multipart"),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="a.txt"\r\n\r\ntruncated without a closing boundary'.encode(),
            400,
            "bad_multipart",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            multipart('Content-Disposition: form-data; name="other"\r\n\r\nvalue'),
            422,
            "missing_file",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            multipart(
                'Content-Disposition: form-data; name="file"; filename="a"\r\n\r\n1',
                'Content-Disposition: form-data; name="file"; filename="b"\r\n\r\n2',
            ),
            400,
            "too_many_files",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            b"garbage that is not multipart at all",
            400,
            "bad_multipart",
        ),
    ],
)
def test_bad_multipart_gets_a_clear_error_and_leaves_nothing(
    client: TestClient,
    auth: dict[str, str],
    content_type: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    response = client.post("/upload", headers={**auth, "Content-Type": content_type}, content=body)
    assert response.status_code == status, response.text
    assert response.json()["status"] == "error"
    assert response.json()["code"] == code
    assert stored_files(client) == []
    assert spool_leftovers(client) == []


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\Desktop\\save.dat", "save.dat"),
        ("bad\x00name\x1b[31m.txt", "badname[31m.txt"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ("  spaced out.txt  ", "spaced out.txt"),
        ("été 日本.txt", "été 日本.txt"),
        (".hidden", ".hidden"),
    ],
)
def test_client_file_names_are_kept_but_made_safe(
    client: TestClient, auth: dict[str, str], sent: str, stored: str
) -> None:
    response = client.post(
        "/upload",
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=multipart(
            f'Content-Disposition: form-data; name="file"; filename="{sent}"\r\n\r\ncontent'
        ),
    )
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == stored
    [path] = stored_files(client)
    assert path.name == stored
    assert path.parent.parent == client.app.state.services.settings.local.storage_dir


def test_long_file_names_are_bounded_and_keep_their_extension(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.post("/upload", headers=auth, files={"file": ("é" * 400 + ".zip", b"1")})
    name = response.json()["filename"]
    assert len(name.encode()) <= 255
    assert name.endswith(".zip")


def test_rfc5987_file_names_are_understood(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/upload",
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=multipart(
            "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%C3%A9t%C3%A9.txt"
            "\r\n\r\ncontent"
        ),
    )
    assert response.json()["filename"] == "été.txt"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (StorageFull("MEGA storage quota exceeded"), 507, "storage_full"),
        (StorageTimeout("MEGA did not answer in time"), 504, "storage_timeout"),
        (UpstreamRejected("MEGA kept failing after 10 attempts"), 502, "storage_failed"),
    ],
)
def test_storage_failures_map_to_their_status_and_leave_no_temp_file(
    make_client, auth: dict[str, str], error: Exception, status: int, code: str
) -> None:
    backend = FailingBackend(error)
    client = make_client(backend=backend)
    response = client.post("/upload", headers=auth, files={"file": ("a.bin", b"q" * 5000)})
    assert response.status_code == status
    assert response.json() == {"status": "error", "message": str(error), "code": code}
    assert backend.seen and backend.seen[0][1:] == ("a.bin", 5000)
    assert spool_leftovers(client) == []


def test_unexpected_errors_reveal_nothing_internal(
    make_client, auth: dict[str, str], token: str
) -> None:
    secret_path = "/srv/secret/location"
    client = make_client(
        backend=FailingBackend(RuntimeError(f"boom at {secret_path} {token}")), raise_errors=False
    )
    response = client.post("/upload", headers=auth, files={"file": ("a.bin", b"q")})
    assert response.status_code == 500
    assert response.json() == {
        "status": "error",
        "message": "internal server error",
        "code": "internal_error",
    }
    assert secret_path not in response.text and token not in response.text
    assert spool_leftovers(client) == []


def test_storage_work_runs_off_the_event_loop(make_client, auth: dict[str, str]) -> None:
    backend = GatedBackend()
    client = make_client(backend=backend)
    result: dict[str, int] = {}

    def upload() -> None:
        result["status"] = client.put("/files/a.bin", headers=auth, content=b"d" * 10).status_code

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert backend.entered.wait(timeout=10)
        # If store() ran on the event loop, /health could not be answered until the gate
        # opens. TestClient has no timeout of its own, so the probe runs in a thread.
        probe: dict[str, int] = {}
        prober = threading.Thread(
            target=lambda: probe.update(status=client.get("/health").status_code)
        )
        prober.start()
        prober.join(timeout=5)
        assert probe == {"status": 200}, "/health waited for the storage work"
    finally:
        backend.release.set()
        uploader.join(timeout=10)
    assert result["status"] == 200
    assert backend.sizes == [10]


def test_too_many_concurrent_uploads_get_503_with_retry_after(
    make_client, auth: dict[str, str]
) -> None:
    backend = GatedBackend()
    client = make_client(backend=backend, max_concurrent_uploads=1, upload_slot_wait_seconds=0)
    uploader = threading.Thread(target=lambda: client.put("/files/a", headers=auth, content=b"1"))
    uploader.start()
    try:
        assert backend.entered.wait(timeout=10)
        response = client.put("/files/b", headers=auth, content=b"2")
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["code"] == "too_many_uploads"
    finally:
        backend.release.set()
        uploader.join(timeout=10)
    assert client.put("/files/c", headers=auth, content=b"3").status_code == 200


def test_start_up_sweeps_crash_leftovers_but_not_live_uploads(make_client, tmp_path: Path) -> None:
    import fcntl

    spool = tmp_path / "spool"
    spool.mkdir()
    leftover = spool / "paimon-upload-crashed"
    leftover.write_bytes(b"half an upload")
    live = spool / "paimon-upload-live"
    live.write_bytes(b"someone else's upload")
    unrelated = spool / "keep-me.txt"
    unrelated.write_bytes(b"not ours")
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running worker holds on its upload
        make_client()
        assert not leftover.exists()
        assert live.exists()
        assert unrelated.exists()


def test_spool_files_are_private(make_client, auth: dict[str, str]) -> None:
    backend = GatedBackend()
    client = make_client(backend=backend)
    uploader = threading.Thread(target=lambda: client.put("/files/a", headers=auth, content=b"1"))
    uploader.start()
    try:
        assert backend.entered.wait(timeout=10)
        [temp] = spool_leftovers(client)
        assert temp.stat().st_mode & 0o077 == 0
        assert client.app.state.services.spool.directory.stat().st_mode & 0o077 == 0
    finally:
        backend.release.set()
        uploader.join(timeout=10)
    assert spool_leftovers(client) == []


def test_download_of_unknown_or_traversing_links_is_404(client: TestClient) -> None:
    for path in ["/files/AAAAAAAAAAAAAAAAAAAAAA/x", "/files/..%2F..%2Fetc/passwd", "/files/a/b"]:
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["status"] == "error"


def test_errors_for_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"status": "error", "message": "Not Found", "code": "not_found"}
    wrong_method = client.get("/upload")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


def test_public_base_url_is_used_for_links(make_client, auth: dict[str, str]) -> None:
    client = make_client(public_base_url="https://files.example.org/")
    body = client.put("/files/a.txt", headers=auth, content=b"1").json()
    assert body["link"].startswith("https://files.example.org/files/")


def test_relayed_upload_that_storage_abandons_answers_promptly(
    make_client, auth: dict[str, str]
) -> None:
    backend = FailingStreamBackend(StorageFull("MEGA storage quota exceeded"), 1024 * 1024)
    client = make_client(backend=backend)
    body = os.urandom(16 * 1024 * 1024)  # far more than the relay's queue holds
    response = client.put("/files/big.bin", headers=auth, content=body)
    assert response.status_code == 507
    assert response.json()["code"] == "storage_full"
    assert backend.received == 1024 * 1024
    assert spool_leftovers(client) == []


def test_names_that_truncate_to_dots_get_the_default_name(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.put("/files/" + quote("." + " " * 300 + "y"), headers=auth, content=b"1")
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == DEFAULT_NAME
    [path] = stored_files(client)
    assert path.name == DEFAULT_NAME and path.read_bytes() == b"1"


@pytest.mark.parametrize(
    "disposition",
    [
        'form-data; name="file"',  # curl -F "file=<x", libcurl's curl_mime_data
        'form-data; name="file"; filename=""',
        'form-data; name="file"; filename="../.."',  # cleans to nothing
    ],
)
def test_nameless_file_parts_are_stored_under_the_default_name(
    client: TestClient, auth: dict[str, str], disposition: str
) -> None:
    response = client.post(
        "/upload",
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=multipart(f"Content-Disposition: {disposition}\r\n\r\nscreenshot"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == DEFAULT_NAME
    [path] = stored_files(client)
    assert path.name == DEFAULT_NAME and path.read_bytes() == b"screenshot"


@pytest.mark.parametrize("streamed", [True, False])
def test_names_at_the_length_limit_are_stored(
    client: TestClient, auth: dict[str, str], streamed: bool
) -> None:
    name = "n" * 250 + ".bin"
    headers = auth if streamed else {**auth, "Transfer-Encoding": "chunked"}
    content = b"data" if streamed else iter([b"da", b"ta"])
    response = client.put("/files/" + name, headers=headers, content=content)
    assert response.status_code == 200, response.text
    [path] = stored_files(client)
    assert path.name == name
    assert path.read_bytes() == b"data"


def test_an_overlong_multipart_boundary_is_a_400(client: TestClient, auth: dict[str, str]) -> None:
    boundary = "b" * 300
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n1'
    response = client.post(
        "/upload",
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=(body + f"\r\n--{boundary}--\r\n").encode(),
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_multipart"


def test_a_removed_spool_directory_is_made_again(client: TestClient, auth: dict[str, str]) -> None:
    spool = client.app.state.services.spool.directory
    spool.rmdir()  # what temp cleaners do to an idle directory under /tmp
    response = client.post("/upload", headers=auth, files={"file": ("a.txt", b"still works")})
    assert response.status_code == 200
    assert spool.stat().st_mode & 0o777 == 0o700


def test_ready_is_503_when_uploads_cannot_be_spooled(client: TestClient) -> None:
    spool = client.app.state.services.spool.directory
    spool.rmdir()
    spool.write_bytes(b"")  # a file where the directory should be
    response = client.get("/ready")
    assert response.status_code == 503
    assert "temporary upload directory" in response.json()["message"]


def test_a_spool_directory_of_another_user_is_refused(make_client, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, 54321, 54321)
    with pytest.raises(SpoolUnusable):
        make_client()


def test_an_open_spool_directory_is_made_private(make_client, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    make_client()
    assert spool.stat().st_mode & 0o777 == 0o700


def test_worker_threads_cover_the_upload_limit(make_client) -> None:
    from anyio import to_thread

    client = make_client(max_concurrent_uploads=100)
    tokens = client.portal.call(lambda: to_thread.current_default_thread_limiter().total_tokens)
    assert tokens >= 2 * 100 + 16


def test_a_local_file_keeps_the_date_its_client_gave(client, auth) -> None:
    answer = client.put(
        "/files/old.txt", content=b"from 2009", headers={**auth, "X-File-Mtime": "1234567890"}
    )
    assert answer.status_code == 200, answer.text
    download = client.get(answer.json()["link"])
    assert download.headers["last-modified"] == "Fri, 13 Feb 2009 23:31:30 GMT"
    form = client.post(
        "/upload", headers={**auth, "X-File-Mtime": "1234567890"}, files={"file": ("f", b"y")}
    )
    assert client.get(form.json()["link"]).headers["last-modified"].endswith("2009 23:31:30 GMT")
