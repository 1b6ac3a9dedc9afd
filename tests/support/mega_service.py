"""A real server process storing in the MEGA emulator, and the checks tests make on it.

Shared by the end-to-end, streaming and shared-log-in tests: the account they log in
with, how a service is started against an emulator, and how a stored file is checked
(downloaded through its link, decrypted, its MAC verified; by mega.py too where it can).
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
from mega.crypto import get_chunks

from app.storage.mega.retry import Waits
from tests.conftest import ServerProcess, start_server
from tests.mega_emulator import MegaEmulator
from tests.mega_emulator.stock_client import EmulatedMega
from tests.mega_verify import parse_link, verify

EMAIL, PASSWORD = "e2e@example.com", "emulated e2e password"
# MEGA's clients' waits (rate limits, a busy upload server) made short for tests that
# build a retry policy of their own.
QUICK_WAITS = Waits(
    rate_limit_floor_s=0.005,
    rate_limit_mean_s=0.01,
    rate_limit_max_s=0.1,
    upload_slow_down_s=0.01,
    upload_busy_s=0.02,
)
HTTP_TIMEOUT = 60
FAST_RETRIES = {
    "MEGA_RETRY_INITIAL_SECONDS": "0.01",
    "MEGA_RETRY_MAX_SECONDS": "0.1",
    # With EAGAIN at 0.3 a call fails all of n attempts with probability 0.3**n: 20
    # attempts make a spurious failure among the load test's ~600 calls about 1 in 10**7.
    "MEGA_RETRY_ATTEMPTS": "20",
    "MEGA_UPLOAD_DEADLINE_SECONDS": "30",
    "MAX_CONCURRENT_UPLOADS": "16",
    "LOG_LEVEL": "warning",
}
# The sizes mega.py downloaded too (see check_stored), for a test to check it ever did.
MEGA_PY_CHECKS: list[int] = []


class Service:
    """A running server process and the calls the tests make to it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.url
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self.headers = {"X-Auth-Token": server.env["AUTH_TOKEN"]}
        self.spool = Path(server.env["TEMP_UPLOAD_DIR"])

    def upload(self, name: str, data: bytes) -> httpx.Response:
        return self.http.post(
            f"{self.url}/upload",
            params={"service": "mega"},
            headers=self.headers,
            files={"file": (name, data, "application/octet-stream")},
        )

    def health(self) -> int:
        return self.http.get(f"{self.url}/health", timeout=5).status_code

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir()) if self.spool.exists() else []

    def close(self) -> None:
        self.http.close()
        self.server.stop()


def start_service(
    base: Path, emulator: MegaEmulator, argv: list[str] | None = None, **env: str
) -> Service:
    """The service with STORAGE_BACKEND=mega against ``emulator``, logging in as EMAIL."""
    base.mkdir(parents=True, exist_ok=True)
    settings = {
        "STORAGE_BACKEND": "mega",
        "MEGA_API_URL": emulator.url,
        "MEGA_EMAIL": EMAIL,
        "MEGA_PASSWORD": PASSWORD,
        **FAST_RETRIES,
        **env,
    }
    return Service(start_server(base, settings, argv))


def mega_py_can_read(link: str, size: int) -> bool:
    """mega.py's download cannot cope with '-' in handles, empty files, or a last chunk
    of 16 bytes or less."""
    handle, _ = parse_link(link)
    last = list(get_chunks(size))[-1][1] if size else 0
    return "-" not in handle and size > 0 and last > 16


def check_stored(
    emulator: MegaEmulator,
    response: httpx.Response,
    name: str,
    data: bytes,
    tmp_path: Path | None = None,
) -> None:
    """The upload answered 200 with a link whose file decrypts to ``data`` under ``name``
    (and, given a ``tmp_path``, that mega.py downloads too where it can)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["link"].startswith("https://mega.nz/file/")
    assert body["size"] == len(data)
    verify(emulator.url, body["link"], data, name=name)
    if tmp_path is not None and mega_py_can_read(body["link"], len(data)):
        target = tmp_path / "mega-py"
        target.mkdir(exist_ok=True)
        saved = EmulatedMega(emulator.url, timeout=HTTP_TIMEOUT).download_url(
            body["link"], str(target), "copy"
        )
        assert Path(saved).read_bytes() == data
        MEGA_PY_CHECKS.append(len(data))


def payload(size: int, seed: int | str) -> bytes:
    """Bytes of their own for each seed: uploads of the same bytes share one stored file
    (README, "Records"), so tests that check each upload's own name send distinct ones."""
    return random.Random(seed).randbytes(size)
