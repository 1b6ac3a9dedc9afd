"""async-mega-py 2.5.0 uploading to the emulator; runs in the reference environment.

    <reference python> -m benchmarks.async_mega_driver < job.json

The job (JSON on stdin) names the emulator, the account, the files and the limiter:
``shipped`` leaves the client as it is, ``lifted`` removes its request limiter. Prints
one JSON line with the library versions, then one per upload: the file's name, the
seconds ``upload()`` took and a public link to the node it made.

Nothing of the library is patched on disk; two attributes change in this process only:

- ``MegaAPI._entrypoint``, the class-level API address (``https://g.api.mega.co.nz/cs``),
  points at the emulator's ``/cs``, as ``tests.mega_emulator.stock_client`` points
  mega.py there;
- for ``lifted``: ``MegaAPI._rate_limiter``, an ``aiolimiter.AsyncLimiter(100, 60)``
  entered around every request (API commands and upload chunks alike, mega/api.py), is
  replaced by a context that does not wait. Per client: 100 requests at once, then 100
  a minute, so a 1 MiB chunk per request caps a long upload at about 1.7 MB/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yarl
from mega.api import MegaAPI
from mega.client import MegaNzClient


async def one_upload(job: dict[str, Any], path: Path) -> dict[str, Any]:
    # A fresh client per file, as a script run once per upload has: its limiter starts
    # full (100 requests), the most favourable case for the shipped client.
    client = MegaNzClient()
    try:
        if job["limiter"] == "lifted":
            client._api._rate_limiter = contextlib.nullcontext()
        await client.login(job["email"], job["password"])
        root = (await client.get_filesystem()).root.id  # listed at log-in, not timed
        started = time.perf_counter()
        node = await client.upload(path, root)
        seconds = time.perf_counter() - started
        link = await client.export(node)
    finally:
        await client.aclose()
    return {"name": path.name, "seconds": seconds, "link": link}


async def run(job: dict[str, Any]) -> None:
    MegaAPI._entrypoint = yarl.URL(job["api_url"].rstrip("/") + "/cs")
    versions = {name: metadata.version(name) for name in ("async-mega-py", "aiohttp")}
    print(json.dumps({"versions": versions}), flush=True)
    for name in job["files"]:
        print(json.dumps(await one_upload(job, Path(name))), flush=True)


def main() -> int:
    asyncio.run(run(json.load(sys.stdin)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
