"""gunicorn settings for production: `gunicorn server:app --config gunicorn.conf.py`.

Every value can be tuned through the environment, so the same file serves Render,
Docker and a bare VM. Options given on the command line (e.g. --bind) win over this file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from app.serving import master

# The service's settings, checked once here in the master before gunicorn binds or starts
# a worker: a bad one stops start-up with one line naming it (exit status 3). Also keeps
# the tokens file for workers started later while it is bad (app/serving/master.py).
master.check_once(sys.argv)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError as error:
        raise SystemExit(f"gunicorn.conf.py: {name} must be an integer, got {raw!r}") from error


# Only used when --bind is not given. 0.0.0.0 because in a container or on a platform the
# traffic arrives on an outside interface. The documented start commands pass --bind,
# which wins: behind a local proxy, change --bind there.
bind = [f"{os.environ.get('HOST', '0.0.0.0').strip() or '0.0.0.0'}:{_int_env('PORT', 8080)}"]

# The maintained uvicorn worker (uvicorn_worker.UvicornWorker) with the service's HTTP
# protocol limits: gunicorn's own limit_request_* settings do not reach uvicorn workers,
# so request-head size, head deadline and connections per client address are enforced by
# app/serving/protocol.py (MAX_REQUEST_HEAD_BYTES, REQUEST_HEAD_TIMEOUT_SECONDS, ...).
worker_class = "app.serving.worker.PaimonWorker"

# Each worker is an asyncio process serving many connections. 2 fits a 512 MB instance:
# uploads are streamed to disk, so memory per worker stays small, and a second worker
# keeps /health answering while the other is busy starting up or recycling.
workers = _int_env("WEB_CONCURRENCY", 2)

# For the uvicorn worker this is NOT a request deadline: the worker's event loop pings
# the master every `timeout` seconds, and the master only kills a worker that stopped
# pinging (a blocked event loop). An upload streaming for an hour keeps pinging, so it
# is never cut off by this value; the application bounds uploads itself
# (MEGA_UPLOAD_DEADLINE_SECONDS).
timeout = _int_env("GUNICORN_TIMEOUT", 120)

# On SIGTERM (deploy, scale-down, docker stop) workers stop accepting connections and get
# this long to finish in-flight uploads before they are killed. Keep it below the
# platform's own kill delay: Render's maxShutdownDelaySeconds (300 in render.yaml), and
# `docker stop --time` / `--stop-timeout` for containers (Docker's default is only 10 s).
graceful_timeout = _int_env("GUNICORN_GRACEFUL_TIMEOUT", 270)

# Idle keep-alive connections are held longer than typical load-balancer idle timeouts
# (60 s), so the proxy never reuses a connection the server has just closed (a 502).
keepalive = _int_env("GUNICORN_KEEPALIVE", 75)

# Which peers may set X-Forwarded-For/Proto: the client address (logs, the brake on wrong
# tokens, the connection cap) is then the rightmost X-Forwarded-For entry that is not one
# of them, the one the proxy itself appended. Never "*": with it, uvicorn takes the
# leftmost entry, which the client writes. The default trusts only localhost; Render's
# value is in render.yaml. Links never depend on it: they come from PUBLIC_BASE_URL.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Access and error logs go to stdout/stderr, where platforms and journald collect them.
# Request lines and status codes only: tokens travel in headers, which are never logged.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").strip().lower() or "info"

# gunicorn 25+ opens a control socket for `gunicornc` by default, in $XDG_RUNTIME_DIR or
# $HOME/.gunicorn: an error line where that is not writable (a container), and on a host
# it takes the place of another gunicorn's socket of the same user. Off unless an
# operator names a path for it.
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"].strip()

# Worker heartbeat files on tmpfs when available: a container's overlay filesystem can
# stall the heartbeat writes and get healthy workers killed.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Prometheus metrics of all workers (prometheus-client multiprocess mode, see
# app/metrics.py): workers write their values under PROMETHEUS_MULTIPROC_DIR, set here
# before they start (a fresh directory, removed on exit, unless one is given: then it is
# emptied), and a dead worker's live gauges are dropped.
_made_metrics_dir: list[str] = []


def on_starting(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = tempfile.mkdtemp(prefix="paimon-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        _made_metrics_dir.append(folder)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()


def on_reload(server):
    # SIGHUP: the settings as they are now (.env may have changed) when they are good, else
    # the running ones with one line in the log, before gunicorn starts the new workers.
    master.reread(server.log)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    for folder in _made_metrics_dir:
        shutil.rmtree(folder, ignore_errors=True)


# LOG_FORMAT=json: gunicorn's own lines as JSON objects too.
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    from app.logging_setup import gunicorn_logconfig

    logconfig_dict = gunicorn_logconfig(loglevel)
