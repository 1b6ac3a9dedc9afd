"""The documentation keeps up with the settings, and its first steps work as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.config import variable_names
from tests.conftest import ROOT

SETTINGS = variable_names()
README = (ROOT / "README.md").read_text()
COMMAND_WAIT_S = 30


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = [name for name in SETTINGS if name not in text]
    assert missing == [], f"{document} does not mention {missing}"


def first_shell_line(starting: str) -> str:
    """The first line of a ```sh block in README.md that starts with ``starting``."""
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if line.startswith(starting):
                return line
    raise AssertionError(f"README.md shows no command starting with {starting!r}")


def test_readmes_first_curl_upload_works_on_the_development_run(
    live_server, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        assert os.environ.get("CI") != "true", "curl is needed in CI"
        pytest.skip("curl is not installed")
    # `python server.py` as README's "Run" starts it: nothing configured.
    server = live_server(
        [sys.executable, str(ROOT / "server.py")],
        cwd=tmp_path,
        AUTH_TOKEN=None,
        STORAGE_BACKEND=None,
        LOCAL_STORAGE_DIR=None,
        PUBLIC_BASE_URL=None,
    )
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(os.urandom(50_000))
    # README's commands as written; only the port is this test's own.
    commands = [first_shell_line("export TOKEN="), first_shell_line("curl ")]
    script = "\n".join(commands).replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")

    done = subprocess.run(
        ["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_WAIT_S
    )

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == "success", answer
    assert answer["filename"] == "holiday.jpg"
    assert httpx.get(answer["link"], timeout=COMMAND_WAIT_S).content == photo.read_bytes()
