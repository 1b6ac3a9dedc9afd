"""An ASGI app that only receives a request body and answers its length.

The benchmark runs it under uvicorn, as the server runs, to measure what receiving the
bytes alone costs: the part of the server's CPU per GiB that is uvicorn's, not the
upload's.
"""

from __future__ import annotations

from typing import Any

from app.intake.relay import tune_allocator

tune_allocator()  # as the service does at start-up


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(received).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
