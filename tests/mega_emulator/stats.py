"""Counters the emulator keeps so tests and benchmarks can see what happened."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

SCALARS = (
    "api_requests",
    "logins_ok",
    "logins_failed",
    "hashcash_issued",
    "hashcash_passed",
    "hashcash_failed",
    "sessions_expired",
    "chunk_posts",
    "chunk_bytes",
    "uploads_completed",
    "files_stored",
    "folders_created",
    "downloads",
    "download_bytes",
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scalars: Counter[str] = Counter()
        self._commands: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._scalars[name] += amount

    def command(self, name: str) -> None:
        with self._lock:
            self._commands[name] += 1

    def fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            result: dict[str, Any] = {name: self._scalars[name] for name in SCALARS}
            result["commands"] = dict(self._commands)
            result["faults_injected"] = dict(self._faults)
            return result

    def reset(self) -> None:
        with self._lock:
            self._scalars.clear()
            self._commands.clear()
            self._faults.clear()
