"""tus 1.0 at /tus/ on the real app (local disk): the protocol's answers, admission once
per upload, checksums checked before anything is stored, termination and expiry."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import tokens_toml, write_in_place

MiB = 1024 * 1024
OFFSET_STREAM = "application/offset+octet-stream"
WAIT_S = 15.0


def tus(auth: dict[str, str]) -> dict[str, str]:
    return {**auth, "Tus-Resumable": "1.0.0"}


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(client: TestClient, headers: dict[str, str], size: int, name: str = "f.bin") -> str:
    response = client.post(
        "/tus/",
        headers={**headers, "Upload-Length": str(size), "Upload-Metadata": metadata(filename=name)},
    )
    assert response.status_code == 201, response.text
    return response.headers["location"]


def patch(
    client: TestClient, headers: dict[str, str], url: str, offset: int, data: bytes, **extra: str
) -> httpx.Response:
    sent = {**headers, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
    sent.update({key.replace("_", "-"): value for key, value in extra.items()})
    return client.patch(url, headers=sent, content=data)


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def growing_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "files").glob("*/.tus-*"))


def states(tmp_path: Path) -> list[str]:
    folder = tmp_path / "tus-state"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


@pytest.fixture
def app_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(public_base_url="http://files.example")


# -- the protocol ------------------------------------------------------------------------


def test_options_offers_the_extensions_that_work_without_storage_of_our_own(
    app_client: TestClient,
) -> None:
    response = app_client.options("/tus/")

    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    offered = set(response.headers["Tus-Extension"].split(","))
    assert offered == {"creation", "creation-with-upload", "termination", "expiration", "checksum"}
    assert int(response.headers["Tus-Max-Size"]) == 1024**3
    assert {"sha1", "sha256"} <= set(response.headers["Tus-Checksum-Algorithm"].split(","))


def test_an_upload_in_pieces_is_stored_and_answered_like_a_put(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    headers = tus(auth)
    data = os.urandom(3 * MiB + 7)
    url = create(app_client, headers, len(data), "holiday photo.jpg")

    head = app_client.head(url, headers=headers)
    assert head.status_code == 200
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", str(len(data)))
    assert head.headers["Upload-Metadata"] == metadata(filename="holiday photo.jpg")
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert "GMT" in head.headers["Upload-Expires"]

    offset = 0
    for piece in (data[: MiB + 1], data[MiB + 1 : 2 * MiB], data[2 * MiB :]):
        response = patch(app_client, headers, url, offset, piece)
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
    assert offset == len(data)
    link = response.headers["Paimon-Link"]

    answer = app_client.get(url, headers=headers)
    assert answer.status_code == 200
    body = answer.json()
    assert body["link"] == link and link.startswith("http://files.example/files/")
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert body["filename"] == "holiday photo.jpg"
    assert app_client.get(link.removeprefix("http://files.example")).content == data
    # The same answer, field for field, as a PUT of the same file gets.
    put = app_client.put("/files/holiday%20photo.jpg", headers=auth, content=data).json()
    assert set(put) == set(body)
    assert {k: put[k] for k in ("status", "message", "sha256", "size", "filename")} == {
        k: body[k] for k in ("status", "message", "sha256", "size", "filename")
    }


def test_a_finished_upload_has_its_record_like_any_upload(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """Listed with its token and SHA-256, deletable by its own delete URL, expiring when
    asked, and the same bytes as an earlier upload make no second file."""
    lister = "tus-lister-token-8a7b6c5d"
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(lister={"secret": lister, "can_list": True}))
    client = make_client(public_base_url="http://files.example", tokens_file=path)
    headers = tus({"X-Auth-Token": lister})
    data = os.urandom(2 * MiB + 3)
    response = client.post(
        "/tus/",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata(filename="rec.bin", expires_in="3600", mtime="1234567890"),
        },
    )
    assert response.status_code == 201, response.text
    url = response.headers["location"]
    assert patch(client, headers, url, 0, data).status_code == 204
    body = client.get(url, headers=headers).json()
    assert body["delete_url"].startswith("http://files.example/delete/")
    assert body["expires_at"] and body["id"] == body["handle"]
    listed = client.get("/uploads", headers={"X-Auth-Token": lister}).json()["uploads"]
    assert [(row["id"], row["token"], row["sha256"]) for row in listed] == [
        (body["id"], "lister", hashlib.sha256(data).hexdigest())
    ]
    download = client.get(body["link"].removeprefix("http://files.example"))
    assert download.content == data
    assert download.headers["last-modified"].endswith("2009 23:31:30 GMT")

    # The same bytes again, by PUT: no second file, the same link.
    again = client.put("/files/again.bin", headers={"X-Auth-Token": lister}, content=data).json()
    assert (again["id"], again["link"]) == (body["id"], body["link"])
    rows = client.get("/uploads", headers={"X-Auth-Token": lister}).json()["uploads"]
    assert [row["id"] for row in rows] == [body["id"]] * 2  # one file, an upload each
    # The tus upload's own delete URL takes back its reference only: the PUT's stays.
    deleted = client.delete(body["delete_url"].removeprefix("http://files.example"))
    assert deleted.status_code == 200
    assert client.get(again["link"].removeprefix("http://files.example")).content == data


def test_terminating_a_finished_upload_takes_it_back_as_its_delete_url_would(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """tus termination frees what an upload used, finished uploads too: its file and link
    go, unless another upload shares the file, which stays theirs."""
    lister = "tus-lister-token-3c4d5e6f"
    path = tmp_path / "tokens.toml"
    path.write_text(tokens_toml(lister={"secret": lister, "can_list": True}))
    client = make_client(public_base_url="http://files.example", tokens_file=path)
    auth = {"X-Auth-Token": lister}
    headers = tus(auth)

    def finished(data: bytes) -> tuple[str, str]:
        url = create(client, headers, len(data))
        assert patch(client, headers, url, 0, data).status_code == 204
        return url, client.get(url, headers=headers).json()["link"]

    def uploads() -> list[str]:
        return [row["id"] for row in client.get("/uploads", headers=auth).json()["uploads"]]

    alone = os.urandom(3000)
    url, link = finished(alone)
    assert client.get(link.removeprefix("http://files.example")).content == alone
    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(link.removeprefix("http://files.example")).status_code == 404
    assert client.get(url, headers=headers).status_code == 404
    assert client.delete(url, headers=headers).status_code == 404
    assert uploads() == [] and states(tmp_path) == []

    # The same bytes uploaded by PUT as well: terminating the tus upload leaves the PUT's.
    shared = os.urandom(3000)
    url, link = finished(shared)
    put = client.put("/files/shared.bin", headers=auth, content=shared).json()
    assert put["link"] == link
    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(link.removeprefix("http://files.example")).content == shared
    assert uploads() == [put["id"]]


def test_a_finished_upload_stays_counted_after_it_is_terminated(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """Taking a finished upload back gives nothing back, as with a delete URL: a day's
    quota (or a ticket's one use) cannot be spent again by finishing and terminating."""
    secret = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(game={"secret": secret, "bytes_per_day": 10_000}))
    client = make_client(auth_token=None, tokens_file=tokens)
    headers = tus({"X-Auth-Token": secret})
    url = create(client, headers, 6000)
    assert patch(client, headers, url, 0, os.urandom(6000)).status_code == 204
    assert client.delete(url, headers=headers).status_code == 204

    refused = client.put("/files/b.bin", headers=headers, content=os.urandom(6000))
    assert (refused.status_code, refused.json()["code"]) == (429, "quota_exceeded")


def test_a_piece_at_the_wrong_offset_is_409_and_changes_nothing(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    headers = tus(auth)
    url = create(app_client, headers, 100)
    assert patch(app_client, headers, url, 0, b"a" * 40).headers["Upload-Offset"] == "40"

    wrong = patch(app_client, headers, url, 20, b"b" * 10)

    assert (wrong.status_code, wrong.json()["code"]) == (409, "offset_mismatch")
    assert app_client.head(url, headers=headers).headers["Upload-Offset"] == "40"


def test_requests_without_the_protocol_version_get_412_and_the_version(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    response = app_client.post("/tus/", headers={**auth, "Upload-Length": "5"})

    assert (response.status_code, response.json()["code"]) == (412, "tus_version_unsupported")
    assert response.headers["Tus-Version"] == "1.0.0"


def test_a_piece_not_sent_as_offset_octet_stream_is_415(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    headers = tus(auth)
    url = create(app_client, headers, 5)
    response = app_client.patch(
        url,
        headers={**headers, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
        content=b"abcde",
    )
    assert (response.status_code, response.json()["code"]) == (415, "wrong_content_type")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ({"Upload-Defer-Length": "1"}, "defer_length_unsupported"),
        ({"Upload-Length": "5", "Upload-Concat": "partial"}, "concatenation_unsupported"),
        (
            {"Upload-Length": "5", "Upload-Concat": "final;/tus/a /tus/b"},
            "concatenation_unsupported",
        ),
    ],
)
def test_deferred_lengths_and_concatenation_are_refused_with_a_reason(
    app_client: TestClient,
    auth: dict[str, str],
    tmp_path: Path,
    header: dict[str, str],
    code: str,
) -> None:
    response = app_client.post("/tus/", headers={**tus(auth), **header})

    assert (response.status_code, response.json()["code"]) == (400, code)
    assert states(tmp_path) == []


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_a_checksum_mismatch_is_460_and_the_piece_is_discarded_until_a_good_resend(
    app_client: TestClient, auth: dict[str, str], algorithm: str
) -> None:
    headers = tus(auth)
    data = os.urandom(300_000)
    url = create(app_client, headers, len(data))
    first = data[:200_000]

    bad = patch(
        app_client, headers, url, 0, first, Upload_Checksum=checksum(algorithm, b"other bytes")
    )
    assert (bad.status_code, bad.json()["code"]) == (460, "checksum_mismatch")
    assert app_client.head(url, headers=headers).headers["Upload-Offset"] == "0"

    good = patch(app_client, headers, url, 0, first, Upload_Checksum=checksum(algorithm, first))
    assert good.headers["Upload-Offset"] == "200000"
    last = patch(app_client, headers, url, 200_000, data[200_000:])
    assert last.status_code == 204
    body = app_client.get(url, headers=headers).json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()


def test_checksums_the_service_cannot_check_are_refused_before_the_body(
    make_client: Callable[..., TestClient], auth: dict[str, str]
) -> None:
    client = make_client(tus_checksum_max_bytes="64KiB")
    headers = tus(auth)
    url = create(client, headers, 200_000)

    unknown = patch(client, headers, url, 0, b"x" * 10, Upload_Checksum="crc32 AAAAAA==")
    too_big = patch(client, headers, url, 0, b"x" * 100_000, Upload_Checksum=checksum("sha1", b""))

    assert (unknown.status_code, unknown.json()["code"]) == (400, "checksum_unsupported")
    assert (too_big.status_code, too_big.json()["code"]) == (413, "checksum_piece_too_large")
    assert client.head(url, headers=headers).headers["Upload-Offset"] == "0"


def test_a_piece_past_the_upload_length_is_413(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    headers = tus(auth)
    url = create(app_client, headers, 10)
    response = patch(app_client, headers, url, 0, b"x" * 11)
    assert (response.status_code, response.json()["code"]) == (413, "past_upload_length")


def test_an_empty_file_is_complete_when_it_is_created(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    response = app_client.post("/tus/", headers={**tus(auth), "Upload-Length": "0"})

    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    link = response.headers["Paimon-Link"]
    assert app_client.get(link.removeprefix("http://files.example")).content == b""


def test_the_first_piece_may_come_with_the_creation(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    headers = tus(auth)
    response = app_client.post(
        "/tus/",
        headers={**headers, "Upload-Length": "10", "Content-Type": OFFSET_STREAM},
        content=b"0123456",
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "7"
    done = patch(app_client, headers, response.headers["location"], 7, b"789")
    assert "Paimon-Link" in done.headers


def test_a_method_override_on_post_is_taken_as_the_method(
    app_client: TestClient, auth: dict[str, str]
) -> None:
    headers = tus(auth)
    url = create(app_client, headers, 3)
    response = app_client.post(
        url,
        headers={
            **headers,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": OFFSET_STREAM,
        },
        content=b"abc",
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"


# -- ending: termination and expiry ----------------------------------------------------------


def test_termination_drops_the_growing_file_and_the_state(
    app_client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    headers = tus(auth)
    url = create(app_client, headers, 2 * MiB)
    patch(app_client, headers, url, 0, os.urandom(MiB))
    assert len(growing_files(tmp_path)) == 1 and len(states(tmp_path)) == 1

    response = app_client.delete(url, headers=headers)

    assert response.status_code == 204
    assert app_client.head(url, headers=headers).status_code == 404
    assert growing_files(tmp_path) == [] and states(tmp_path) == []
    assert list((tmp_path / "files").iterdir()) == []


def test_an_expired_upload_is_gone_with_its_file(
    make_client: Callable[..., TestClient], auth: dict[str, str], tmp_path: Path
) -> None:
    client = make_client(tus_expiry_seconds=1)
    headers = tus(auth)
    url = create(client, headers, 2 * MiB)
    response = patch(client, headers, url, 0, os.urandom(MiB))
    expires = email.utils.parsedate_to_datetime(response.headers["Upload-Expires"]).timestamp()
    time.sleep(max(0.0, expires - time.time()) + 1.0)  # the header has whole seconds

    gone = client.head(url, headers=headers)

    # 410 when this request finds it expired, 404 when the sweep was there first.
    assert gone.status_code in (404, 410)
    assert "Upload-Offset" not in gone.headers
    assert client.head(url, headers=headers).status_code == 404
    assert growing_files(tmp_path) == [] and states(tmp_path) == []


def test_an_abandoned_upload_is_swept_after_its_expiry(
    make_client: Callable[..., TestClient], auth: dict[str, str], tmp_path: Path
) -> None:
    client = make_client(tus_expiry_seconds=1)
    headers = tus(auth)
    url = create(client, headers, 2 * MiB)
    patch(client, headers, url, 0, os.urandom(MiB))

    # Nobody asks again: the sweep (every 0.5 s here) ends it.
    deadline = time.monotonic() + WAIT_S
    while (states(tmp_path) or growing_files(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)

    assert states(tmp_path) == [] and growing_files(tmp_path) == []
    assert client.head(url, headers=headers).status_code == 404


# -- admission: once per upload ---------------------------------------------------------------


def test_limits_count_an_upload_once_however_many_pieces_it_has(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        tokens_toml(game={"secret": secret, "uploads_per_minute": 1, "bytes_per_day": 3 * MiB})
    )
    client = make_client(auth_token=None, tokens_file=tokens)
    headers = tus({"X-Auth-Token": secret})
    url = create(client, headers, 2 * MiB)
    offset = 0
    for _ in range(8):  # eight pieces: one upload
        response = patch(client, headers, url, offset, os.urandom(MiB // 4))
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
    assert offset == 2 * MiB

    again = client.post("/tus/", headers={**headers, "Upload-Length": "10"})
    assert (again.status_code, again.json()["code"]) == (429, "rate_limited")


def test_the_size_is_reserved_at_creation_and_given_back_when_the_upload_ends(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(game={"secret": secret, "bytes_per_day": 3 * MiB}))
    client = make_client(auth_token=None, tokens_file=tokens)
    headers = tus({"X-Auth-Token": secret})
    url = create(client, headers, 2 * MiB)

    # Nothing sent yet, and still only 1 MiB of the day is left for anything else.
    refused = client.put("/files/other.bin", headers=headers, content=b"x" * (MiB + 1))
    assert (refused.status_code, refused.json()["code"]) == (429, "quota_exceeded")

    assert client.delete(url, headers=headers).status_code == 204
    allowed = client.put("/files/other.bin", headers=headers, content=b"x" * (MiB + 1))
    assert allowed.status_code == 200, allowed.text


def test_an_upload_is_only_found_by_the_caller_that_made_it(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    mine, theirs = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(mine={"secret": mine}, theirs={"secret": theirs}))
    client = make_client(auth_token=None, tokens_file=tokens)
    url = create(client, tus({"X-Auth-Token": mine}), 10)
    other = tus({"Authorization": f"Bearer {theirs}"})

    assert client.head(url, headers=other).status_code == 404
    assert patch(client, other, url, 0, b"x" * 10).status_code == 404
    assert client.delete(url, headers=other).status_code == 404
    assert client.head(url, headers=tus({"Authorization": f"Bearer {mine}"})).status_code == 200
    assert client.head(url, headers=tus({})).status_code == 401


def ticketing(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> tuple[TestClient, str, Path]:
    """A service that takes tickets, the token of their issuer, and its tokens file."""
    issuer = secrets.token_urlsafe(24)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(portal={"secret": issuer, "can_issue_tickets": True}))
    client = make_client(
        auth_token=None, tokens_file=tokens, ticket_secret=secrets.token_urlsafe(32)
    )
    return client, issuer, tokens


def issue(client: TestClient, issuer: str, **body: int) -> dict[str, Any]:
    return client.post("/tickets", headers={"X-Auth-Token": issuer}, json=body).json()


def test_a_ticket_is_used_once_for_an_upload_in_many_pieces(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    client, issuer, _ = ticketing(make_client, tmp_path)
    ticket = issue(client, issuer, expires_in=600, max_uses=1)["ticket"]
    headers = tus({"Authorization": f"Bearer {ticket}"})
    url = create(client, headers, 30)
    for offset in range(0, 30, 10):
        assert patch(client, headers, url, offset, b"t" * 10).status_code == 204

    again = client.post("/tus/", headers={**headers, "Upload-Length": "10"})
    assert (again.status_code, again.json()["code"]) == (429, "ticket_used_up")


def test_a_ticket_continues_its_own_upload_after_it_expires(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """A player resuming after the ticket ran out finishes the upload the ticket began
    (it has its own expiry); the ticket begins nothing new and opens nothing else, and
    rotating its issuer still ends it."""
    client, issuer, tokens = ticketing(make_client, tmp_path)
    issued = issue(client, issuer, expires_in=2, max_uses=5)
    headers = tus({"Authorization": f"Bearer {issued['ticket']}"})
    url = create(client, headers, 30)
    theirs = create(client, tus({"X-Auth-Token": issuer}), 10)
    assert patch(client, headers, url, 0, b"t" * 10).status_code == 204
    expires_at = datetime.fromisoformat(issued["expires_at"]).timestamp()
    while time.time() < expires_at + 0.05:
        time.sleep(0.05)

    refused = client.post("/tus/", headers={**headers, "Upload-Length": "10"})
    assert (refused.status_code, refused.json()["code"]) == (401, "ticket_expired")
    assert client.head(theirs, headers=headers).status_code == 404
    assert client.head(url, headers=headers).headers["Upload-Offset"] == "10"
    assert patch(client, headers, url, 10, b"t" * 10).status_code == 204

    write_in_place(tokens, tokens_toml(portal={"secret": issuer + "x", "can_issue_tickets": True}))
    deadline = time.monotonic() + WAIT_S
    while (seen := client.head(url, headers=headers).status_code) != 403:
        assert seen == 200 and time.monotonic() < deadline, seen
        time.sleep(0.2)
    ended = patch(client, headers, url, 20, b"t" * 10)
    assert (ended.status_code, ended.json()["code"]) == (403, "invalid_ticket")


def test_the_openapi_document_describes_the_tus_routes(app_client: TestClient) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    assert set(paths["/tus/{upload_id}"]) >= {"head", "patch", "delete", "get"}
    assert {"post", "options"} <= set(paths["/tus/"])
    patch_answers = paths["/tus/{upload_id}"]["patch"]["responses"]
    for status in ("409", "412", "415", "423", "460"):
        assert status in patch_answers, status
    assert "Paimon-Link" in paths["/tus/{upload_id}"]["patch"]["description"]


def test_the_sha256_state_can_be_saved_and_taken_up_in_another_object() -> None:
    from app.intake.running_sha256 import RunningSha256

    data = os.urandom(1_000_003)
    first = RunningSha256()
    first.update(data[:333_333])
    second = RunningSha256(first.state())
    second.update(bytearray(data[333_333:900_000]))
    second.update(memoryview(data)[900_000:])
    assert second.hexdigest() == hashlib.sha256(data).hexdigest()
    assert first.hexdigest() == hashlib.sha256(data[:333_333]).hexdigest()
