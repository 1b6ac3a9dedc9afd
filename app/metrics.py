"""Prometheus metrics: what the service counts, and the functions that count it.

Under gunicorn every worker is its own process; prometheus-client's multiprocess mode
makes ``GET /metrics`` add up all of them. It is on when ``PROMETHEUS_MULTIPROC_DIR`` is
set before this module is imported: gunicorn.conf.py sets it (a fresh directory per
start) and removes a dead worker's live gauges. A single process (``python server.py``)
needs nothing.

Label values are bounded: backend names, methods, outcome codes from the error catalogue,
MEGA command and error names, and token names. Never a token or a file name.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as _DEFAULT_REGISTRY

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

UPLOADS = Counter(
    "paimon_uploads_total",
    "Upload requests by storage backend, method (multipart or raw) and outcome "
    "(success or the error code).",
    ["backend", "method", "outcome"],
)
UPLOAD_BYTES = Counter(
    "paimon_upload_bytes_total", "Bytes of files stored, by backend.", ["backend"]
)
UPLOAD_SECONDS = Histogram(
    "paimon_upload_duration_seconds",
    "Time from the start of an upload request to its answer, by backend and outcome class.",
    ["backend", "result"],
    buckets=_SECONDS,
)
UPLOADS_IN_FLIGHT = Gauge(
    "paimon_uploads_in_flight",
    "Uploads admitted and not yet answered.",
    multiprocess_mode="livesum",
)
SLOT_WAITS = Histogram(
    "paimon_upload_slot_wait_seconds",
    "Time an upload waited for one of MAX_CONCURRENT_UPLOADS slots.",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30),
)
SLOT_REJECTIONS = Counter(
    "paimon_upload_slot_rejections_total",
    "Uploads answered 503 because every upload slot was busy.",
)
LIMIT_REJECTIONS = Counter(
    "paimon_limit_rejections_total",
    "Uploads refused by a rate limit or quota, by token name and limit.",
    ["token", "limit"],
)
MEGA_REQUESTS = Counter(
    "paimon_mega_api_requests_total",
    "MEGA API requests by command (a, us, p, ...) and outcome (ok or the MEGA error name).",
    ["command", "outcome"],
)
MEGA_RETRIES = Counter(
    "paimon_mega_retries_total",
    "MEGA requests or upload regions tried again, by the error that caused it.",
    ["error"],
)
MEGA_LOGINS = Counter(
    "paimon_mega_logins_total", "MEGA log-ins by outcome (ok or failed).", ["outcome"]
)
MEGA_ACCOUNT_BLOCKED = Gauge(
    "paimon_mega_account_blocked",
    "1 while MEGA blocks the service's account (uploads get 503), else 0.",
    multiprocess_mode="max",
)
MEGA_POW_SECONDS = Histogram(
    "paimon_mega_proof_of_work_seconds",
    "Seconds spent solving MEGA's proof of work (hashcash) at log-in.",
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600),
)

# Upload records: how full the storage is, the index, the sweeper.
STORAGE_USED = Gauge(
    "paimon_storage_used_bytes",
    "Bytes used in the storage (MEGA: the account), as last known.",
    multiprocess_mode="mostrecent",
)
STORAGE_TOTAL = Gauge(
    "paimon_storage_total_bytes",
    "Bytes the storage holds in all (MEGA: the account's allowance), as last known.",
    multiprocess_mode="mostrecent",
)
RECORDS_INDEXED = Gauge(
    "paimon_records_indexed",
    "Stored files in the index of uploads, as of its last build or write.",
    multiprocess_mode="mostrecent",
)
RECORDS_SWEPT = Counter(
    "paimon_records_swept_total",
    "Expired uploads handled by the sweeper, by what was done (deleted: the file went with "
    "its last upload; trimmed: other uploads keep it).",
    ["action"],
)


def upload_started() -> None:
    UPLOADS_IN_FLIGHT.inc()


def upload_finished(
    backend: str, method: str, outcome: str, size: int, seconds: float, admitted: bool
) -> None:
    """Count one answered upload request (``admitted``: it had passed auth and limits)."""
    UPLOADS.labels(backend, method, outcome).inc()
    UPLOAD_SECONDS.labels(backend, "success" if outcome == "success" else "error").observe(seconds)
    if outcome == "success":
        UPLOAD_BYTES.labels(backend).inc(size)
    if admitted:
        UPLOADS_IN_FLIGHT.dec()


def slot_waited(seconds: float) -> None:
    """Call where an upload acquires its slot, with how long it waited."""
    SLOT_WAITS.observe(seconds)


def slot_refused() -> None:
    """Call where an upload gave up waiting for a slot."""
    SLOT_REJECTIONS.inc()


def limit_rejected(token: str, limit: str) -> None:
    LIMIT_REJECTIONS.labels(token, limit).inc()


# MEGA client hooks: small calls for the MEGA client to make at the matching points.
def mega_request(command: str, outcome: str) -> None:
    """After each MEGA API command: ``outcome`` is "ok" or the MEGA error name (EAGAIN...)."""
    MEGA_REQUESTS.labels(command, outcome).inc()


def mega_retry(error: str) -> None:
    """Before each retry of a MEGA request or upload region, with the error's name."""
    MEGA_RETRIES.labels(error).inc()


def mega_login(ok: bool) -> None:
    """After each MEGA log-in attempt."""
    MEGA_LOGINS.labels("ok" if ok else "failed").inc()


def mega_account_blocked(blocked: bool) -> None:
    """When MEGA blocks the account, and when the block is found lifted."""
    MEGA_ACCOUNT_BLOCKED.set(1 if blocked else 0)


def mega_proof_of_work(seconds: float) -> None:
    """After solving a hashcash challenge, with the time it took."""
    MEGA_POW_SECONDS.observe(seconds)


def storage_space(used: int, total: int) -> None:
    STORAGE_USED.set(used)
    STORAGE_TOTAL.set(total)


def records_indexed(count: int) -> None:
    RECORDS_INDEXED.set(count)


def records_swept(action: str, count: int = 1) -> None:
    RECORDS_SWEPT.labels(action).inc(count)


def render() -> tuple[bytes, str]:
    """The current metrics of this process, or of all gunicorn workers, and their type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(_DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
