"""Per-request context as plain ASGI middleware: request id and upload accounting.

- Request id: a client's ``X-Request-ID`` is kept (when short, plain and not shaped like
  a credential), else one is made; it is returned in the response and on every log line
  of the request.
- Upload accounting: for requests the admission dependency marked as uploads, one
  summary log line and the upload metrics when the answer is sent, whatever the outcome,
  and the admission finished (its slot freed, the caller's allowances settled with what
  was stored). The upload handlers stay unaware of all this.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.logging_setup import request_id, token_name
from app.serving.logs import accepted_request_id

log = logging.getLogger("app.uploads")

_UPLOAD_KEY = "paimon.upload"
_CAPTURE_BYTES = 64 * 1024


@dataclass
class UploadSummary:
    """What the summary of one upload needs, filled in as the request goes on."""

    backend: str
    method: str
    started: float
    token: str = "-"
    # The file name as the request gives it before any body is read (a PUT's path), so
    # that a refused upload still says which file it was.
    name: str | None = None
    admitted: bool = False
    # Called in a thread with (stored, size) once the answer is sent: slot, allowances.
    finish: Callable[[bool, int], None] | None = None


def start_upload_summary(state: dict[str, Any], backend: str, method: str) -> UploadSummary:
    summary = UploadSummary(backend=backend, method=method, started=time.monotonic())
    state[_UPLOAD_KEY] = summary
    return summary


def current_request_id() -> str:
    return request_id.get()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        rid = accepted_request_id(_header(scope, b"x-request-id")) or uuid.uuid4().hex
        rid_token = request_id.set(rid)
        name_token = token_name.set("")
        status = 500
        captured = bytearray()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            elif (
                message["type"] == "http.response.body"
                and _UPLOAD_KEY in state
                and len(captured) < _CAPTURE_BYTES
            ):
                captured.extend(message.get("body", b"")[:_CAPTURE_BYTES])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            upload = state.get(_UPLOAD_KEY)
            try:
                if upload is not None:
                    await _finish_upload(upload, status, bytes(captured))
            finally:
                token_name.reset(name_token)
                request_id.reset(rid_token)


async def _finish_upload(upload: UploadSummary, status: int, body: bytes) -> None:
    try:
        answer = json.loads(body) if body else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    outcome = "success" if status == 200 else str(answer.get("code") or f"http_{status}")
    size = answer.get("size") if isinstance(answer.get("size"), int) else 0
    seconds = time.monotonic() - upload.started
    metrics.upload_finished(upload.backend, upload.method, outcome, size, seconds, upload.admitted)
    summary = {
        "name": answer.get("filename") or upload.name,
        "size": size,
        "duration_s": round(seconds, 3),
        "backend": upload.backend,
        "method": upload.method,
        "outcome": outcome,
        "status": status,
    }
    log.info(
        "upload %s: %s, %d bytes, %.3f s, backend %s, method %s, status %d",
        outcome,
        json.dumps(summary["name"]),
        size,
        seconds,
        upload.backend,
        upload.method,
        status,
        extra={"upload": summary},
    )
    if upload.finish is not None:
        await to_thread.run_sync(upload.finish, outcome == "success", size)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
