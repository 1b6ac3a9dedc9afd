"""Install self-check: the environment can run the MEGA client on this Python.

mega.py 1.0.8 declares two dependencies that break modern Pythons: the `pathlib` PyPI
backport (it shadows the standard library module) and tenacity<6 (it fails on import on
Python 3.11+ with "module 'asyncio' has no attribute 'coroutine'"). The supported install
skips both; this file proves that it did.

Run it directly (`python test_pathlib.py`, prints one PASS or FAIL line, exits 0 or 1)
or through pytest, which collects the test functions below.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

MIN_TENACITY_MAJOR = 8


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_pathlib_is_stdlib() -> str:
    import pathlib

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    origin = Path(pathlib.__file__).resolve()
    # On 3.13 pathlib is a package (pathlib/__init__.py); before that a single module.
    location = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    assert location == stdlib, f"pathlib is imported from {origin}, not from {stdlib}"
    return f"pathlib comes from the standard library ({origin.name})"


def check_no_pathlib_distribution() -> str:
    try:
        dist = importlib.metadata.distribution("pathlib")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    assert dist is None, f"the pathlib backport {dist.version} is installed: pip uninstall pathlib"
    # distribution() stops at the first match; also look through everything installed.
    names = {_normalise(d.metadata["Name"] or "") for d in importlib.metadata.distributions()}
    assert "pathlib" not in names, "a pathlib distribution is installed: pip uninstall pathlib"
    return "no pathlib distribution installed"


def check_tenacity() -> str:
    version = importlib.metadata.version("tenacity")
    major = int(re.match(r"\d+", version).group())
    assert major >= MIN_TENACITY_MAJOR, (
        f"tenacity {version} is installed; >= {MIN_TENACITY_MAJOR} is required "
        "(older releases fail on Python 3.11+)"
    )
    importlib.import_module("tenacity")
    return f"tenacity {version} imports"


def check_mega() -> str:
    mega = importlib.import_module("mega")
    assert hasattr(mega, "Mega"), "the mega module has no Mega class"
    from mega import Mega  # noqa: F401  (the import the service performs)

    return f"mega.py {importlib.metadata.version('mega.py')} imports (from mega import Mega)"


CHECKS: tuple[Callable[[], str], ...] = (
    check_pathlib_is_stdlib,
    check_no_pathlib_distribution,
    check_tenacity,
    check_mega,
)


def test_pathlib_is_stdlib() -> None:
    check_pathlib_is_stdlib()


def test_no_pathlib_distribution() -> None:
    check_no_pathlib_distribution()


def test_tenacity_at_least_8_and_imports() -> None:
    check_tenacity()


def test_mega_imports() -> None:
    check_mega()


def main() -> int:
    failures = []
    for check in CHECKS:
        try:
            print(f"  ok   {check()}")
        except Exception as exc:  # any failure here means the install is unusable
            failures.append(check.__name__)
            print(f"  FAIL {check.__name__}: {type(exc).__name__}: {exc}")
    python = f"Python {sys.version.split()[0]}"
    if failures:
        print(f"FAIL: install self-check on {python}: {', '.join(failures)}")
        return 1
    print(f"PASS: install self-check on {python}: stdlib pathlib, tenacity >= 8, mega imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
