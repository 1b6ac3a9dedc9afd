"""The benchmark's own virtual environment, for tools that are no part of the service:
the reference client async-mega-py (which cannot share the service's environment: it
installs a package named ``mega``, as mega.py does) and the profiler py-spy.

    python -m benchmarks.reference_env [--venv DIR]    # create or refresh it, then exit

``run.py`` calls :func:`ensure` itself. The environment is made with this interpreter's
``venv`` and filled with the project's one install command from the hash-pinned
``benchmarks/requirements-reference.txt``; it is rebuilt only when that file changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "benchmarks" / "requirements-reference.txt"
DEFAULT_VENV = ROOT / "benchmarks" / ".venv"  # ignored by git (.gitignore: .venv/)
INSTALL_TIMEOUT_S = 600
STAMP = "requirements-reference.sha256"


def install_command(python: Path) -> list[str]:
    """The project's one install command, for the reference requirements."""
    return [
        str(python),
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--require-hashes",
        "--constraint",
        "constraints.txt",
        "-r",
        str(REQUIREMENTS.relative_to(ROOT)),
    ]


def _python(directory: Path) -> Path:
    return directory / "bin" / "python"


def py_spy(directory: Path = DEFAULT_VENV) -> Path:
    """py-spy's command in the environment (after :func:`ensure`)."""
    return directory / "bin" / "py-spy"


def ensure(directory: Path = DEFAULT_VENV, say: Any = print) -> Path:
    """The reference environment's interpreter, creating or refreshing it first when the
    requirements changed since it was filled."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = directory / STAMP
    python = _python(directory)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    say(f"reference clients: installing {REQUIREMENTS.name} into a virtual environment")
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    result = subprocess.run(
        install_command(python),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "could not install the reference clients "
            f"({' '.join(install_command(python)[1:])}):\n{result.stderr[-2000:]}"
        )
    stamp.write_text(digest + "\n")
    return python


@dataclass(frozen=True)
class ReferenceUpload:
    """One upload made by a reference client: its time and the link to verify it by."""

    name: str
    seconds: float
    link: str


def async_mega_uploads(
    python: Path,
    api_url: str,
    email: str,
    password: str,
    files: list[Path],
    *,
    limiter: str,
    timeout_s: float,
) -> tuple[list[ReferenceUpload], dict[str, str]]:
    """Upload ``files`` with async-mega-py in the reference environment (one fresh,
    logged-in client per file); the timings, and the client's library versions."""
    job = {
        "api_url": api_url,
        "email": email,
        "password": password,
        "limiter": limiter,
        "files": [str(path) for path in files],
    }
    result = subprocess.run(
        [str(python), "-m", "benchmarks.async_mega_driver"],
        cwd=ROOT,
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"async-mega-py ({limiter} limiter) failed:\n{result.stderr[-3000:]}")
    uploads: list[ReferenceUpload] = []
    versions: dict[str, str] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        if "versions" in record:
            versions = record["versions"]
        else:
            uploads.append(ReferenceUpload(record["name"], record["seconds"], record["link"]))
    return uploads, versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    python = ensure(args.venv)
    print(f"reference environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
