"""The per-request context: request ids, and one upload's admission finished after its answer."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from app.api.context import RequestContextMiddleware, start_upload_summary
from app.api.deps import Admission, admit_upload
from tests.standins import GatedBackend


def test_a_plain_request_id_is_kept_and_anything_else_replaced() -> None:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)
    app.get("/")(lambda: {"ok": True})
    client = TestClient(app)
    assert client.get("/", headers={"X-Request-ID": "job-42.a"}).headers["x-request-id"] == (
        "job-42.a"
    )
    token_shaped = secrets.token_urlsafe(32)
    for offered in [token_shaped, "has spaces", "x" * 200]:
        echoed = client.get("/", headers={"X-Request-ID": offered}).headers["x-request-id"]
        assert echoed != offered and len(echoed) == 32


def test_the_summary_and_the_finish_follow_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    finished: list[tuple[bool, int]] = []
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)

    @app.put("/files/{name}")
    async def store(name: str, request: Request) -> dict:
        summary = start_upload_summary(request.scope.setdefault("state", {}), "local", "raw")
        summary.name, summary.admitted = name, True
        summary.finish = lambda stored, size: finished.append((stored, size))
        return {"filename": name, "size": 5}

    with caplog.at_level(logging.INFO, logger="app.uploads"):
        TestClient(app).put("/files/a.txt", content=b"hello")
    assert finished == [(True, 5)]
    assert any('upload success: "a.txt", 5 bytes' in r.getMessage() for r in caplog.records)


def test_one_admission_carries_the_callers_limit_and_declared_size(
    make_client, auth: dict[str, str], tmp_path
) -> None:
    seen: list[Admission] = []
    client = make_client(backend=GatedBackend(), max_upload_bytes=5000)

    @client.app.put("/probe/{filename}")
    async def probe(admission: Annotated[Admission, Depends(admit_upload)]) -> dict:
        seen.append(admission)
        return {"ok": True}

    client.app.router.routes.insert(0, client.app.router.routes.pop())
    answer = client.put("/probe/x.bin", content=b"a" * 1234, headers=auth)
    assert answer.status_code == 200
    (admission,) = seen
    assert (admission.limit, admission.declared, admission.filename) == (5000, 1234, "x.bin")
    assert admission.caller.name == "default"
    too_big = client.put("/probe/y.bin", content=b"a" * 5001, headers=auth)
    assert too_big.status_code == 413 and len(seen) == 1
