"""The deploy's start command, as render.yaml writes it."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent


def render_service() -> dict[str, Any]:
    """The one web service render.yaml defines."""
    path = ROOT / "render.yaml"
    assert path.is_file(), "render.yaml is missing"
    blueprint = yaml.safe_load(path.read_text(encoding="utf-8"))
    web = [service for service in blueprint["services"] if service.get("type") == "web"]
    assert len(web) == 1, "render.yaml must define exactly one web service"
    return web[0]


def start_command_argv(port: int | str) -> list[str]:
    """render.yaml's startCommand, bound to 127.0.0.1:<port>, run with this Python.

    ``port`` may be ``"{port}"``, which ``start_server`` fills in with the port it picks."""
    command = render_service()["startCommand"].replace("$PORT", str(port))
    argv = shlex.split(command.replace("0.0.0.0:", "127.0.0.1:"))
    assert argv[0] == "gunicorn"
    script = Path(sys.executable).parent / "gunicorn"
    if script.exists():
        return [str(script), *argv[1:]]
    found = shutil.which("gunicorn")
    return [found, *argv[1:]] if found else [sys.executable, "-m", "gunicorn", *argv[1:]]


def worker_pids(master: int) -> set[int]:
    """The processes gunicorn's master ``master`` has started."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == master:
                children.add(int(entry.name))
    return children


def wait_for_workers(master: int, count: int, not_among: set[int], wait_s: float = 10) -> set[int]:
    """``count`` workers of ``master``, none of them in ``not_among``."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = worker_pids(master)
        if len(pids) == count and not pids & not_among:
            return pids
        assert time.monotonic() < deadline, f"workers {pids}, expected {count} new ones"
        time.sleep(0.1)
