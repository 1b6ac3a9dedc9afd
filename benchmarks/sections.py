"""RESULTS.md is shared: the main run (run.py) writes the page, and other benchmarks
(records.py, tus_vs_put.py) each own a section between their markers. Each writer
replaces only what is its own."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# A section: from a begin marker "<!-- name: begin -->" to its end marker.
_SECTION = re.compile(r"<!-- (?P<name>[a-z-]+): begin -->.*?<!-- (?P=name): end -->\n?", re.S)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Put ``body`` between ``name``'s markers in ``path``, replacing what was there (or
    at the end the first time); nothing else of the file changes."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip(chr(10))}\n{end}\n"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail.lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)


def other_sections(path: Path = RESULTS) -> str:
    """Every section of ``path`` (for the main run, which rewrites the rest)."""
    text = path.read_text() if path.exists() else ""
    return "\n".join(match.group(0).rstrip("\n") for match in _SECTION.finditer(text))
