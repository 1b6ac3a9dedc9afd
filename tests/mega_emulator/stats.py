"""Counters the emulator keeps so tests and benchmarks can see what happened."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

SCALARS = (
    "logins_mfa_required",
    "hashcash_empty_answers",
    "upload_urls_ssl",
    "upload_urls_without_ssl",
    "upload_urls_v0",
    "upload_urls_v2",
    "upload_urls_v3",
    "window_refusals",
    "replayed_answers",
    "blocked_requests",
    "put_nodes_into_removed_targets",
    "chunk_posts_to_dead_uploads",
    "chunk_posts_to_completed_uploads",
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
    "max_concurrent_chunk_posts",  # the most chunk POSTs being handled at one moment
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scalars: Counter[str] = Counter()
        self._commands: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._tags: dict[str, set[str]] = {}  # command -> the "i" values it carried
        self._chunk_posts_now = 0

    def chunk_post_started(self) -> None:
        with self._lock:
            self._chunk_posts_now += 1
            if self._chunk_posts_now > self._scalars["max_concurrent_chunk_posts"]:
                self._scalars["max_concurrent_chunk_posts"] = self._chunk_posts_now

    def chunk_post_ended(self) -> None:
        with self._lock:
            self._chunk_posts_now -= 1

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._scalars[name] += amount

    def command(self, name: str) -> None:
        with self._lock:
            self._commands[name] += 1

    def tag(self, command: str, tag: str) -> None:
        with self._lock:
            self._tags.setdefault(command, set()).add(tag)

    def fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            result: dict[str, Any] = {name: self._scalars[name] for name in SCALARS}
            result["commands"] = dict(self._commands)
            result["faults_injected"] = dict(self._faults)
            result["tags"] = {name: sorted(tags) for name, tags in self._tags.items()}
            return result

    def reset(self) -> None:
        with self._lock:
            self._scalars.clear()
            self._commands.clear()
            self._faults.clear()
            self._tags.clear()
