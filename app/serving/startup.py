"""Start-up failures in one line: the setting and what is wrong with it, no traceback."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import ConfigError
from app.storage.base import StartupError

# gunicorn stops, instead of starting workers again forever, when a worker exits with 3.
BOOT_ERROR = 3


def stop_for(error: ConfigError) -> NoReturn:
    """Stop start-up with the one line that names the setting at fault (exit status 3)."""
    print(f"paimon-server: configuration error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(BOOT_ERROR)


class OneLineStartupErrors:
    """ASGI middleware: a ``StartupError`` from the lifespan reaches the server as one line.

    Starlette reports a failed start-up with the whole traceback as the message, which
    uvicorn logs as it is (40 to 140 lines for a storage directory that is a file). The
    traceback says nothing more to an operator than the error's own line does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent below, once the exception is known
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except StartupError as error:
            await send(_failed(f"paimon-server: start-up error: {error}"))
            raise
        except BaseException:
            for message in held:
                await send(message)
            raise


def _failed(text: str) -> dict[str, Any]:
    return {"type": "lifespan.startup.failed", "message": text}
