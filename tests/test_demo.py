"""The README's local demo, run as written: emulator process, development server, verify."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, start_server

TIMEOUT_S = 30


def test_readme_demo_against_the_emulator_round_trips_a_file(tmp_path: Path) -> None:
    port = free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.mega_emulator",
            "--port",
            str(port),
            "--account",
            "demo@example.com:demo-password-123",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = None
    try:
        assert emulator.stdout is not None
        assert emulator.stdout.readline().strip() == f"http://127.0.0.1:{port}"
        server = start_server(
            tmp_path,
            {
                "AUTH_TOKEN": None,
                "STORAGE_BACKEND": "mega",
                "MEGA_API_URL": f"http://127.0.0.1:{port}",
                "MEGA_EMAIL": "demo@example.com",
                "MEGA_PASSWORD": "demo-password-123",
            },
            [sys.executable, str(ROOT / "server.py")],
            cwd=tmp_path,
        )
        token = (tmp_path / "data" / "development-token").read_text().strip()
        data = os.urandom(300_000)
        answer = httpx.post(
            f"{server.url}/upload?service=mega",
            headers={"X-Auth-Token": token},
            files={"file": ("holiday.jpg", data)},
            timeout=TIMEOUT_S,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["link"].startswith("https://mega.nz/file/")
        # "ready" is logged once the log-in is done, not before.
        server.log_line("ready: storage=mega")
        assert server.log().index("storage connected") < server.log().index("ready:")
        fetched = tmp_path / "fetched.jpg"
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.mega_verify",
                "--api",
                f"http://127.0.0.1:{port}",
                answer.json()["link"],
                "--output",
                str(fetched),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("OK: 'holiday.jpg', 300000 bytes")
        assert fetched.read_bytes() == data
    finally:
        if server is not None:
            server.stop()
        emulator.terminate()
        emulator.wait(timeout=TIMEOUT_S)
