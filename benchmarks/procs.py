"""The emulator and the server as real processes, and a sampler of the server's memory.

The server runs either as deployed (render.yaml's start command: gunicorn with the
project's worker class from gunicorn.conf.py, here with one worker) or as one plain
uvicorn process.

Every wait here is bounded and every process is stopped by its own id, so a failed or
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import httpx
import yaml

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

ServerKind = Literal["gunicorn", "uvicorn"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a bounded wait; only this process, by its pid."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass
class Emulator:
    """``python -m tests.mega_emulator`` in its own process."""

    url: str
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @classmethod
    def start(
        cls,
        root: Path,
        data_dir: Path,
        account: str,
        log_path: Path,
        wan: tuple[float, float] | None = None,
    ) -> Emulator:
        """The emulator; with ``wan`` = (MB/s, one-way ms), behind ``benchmarks.wan``'s
        shaping proxy, whose address is then the one clients get."""
        common = ["--seed", "1", "--account", account, "--data-dir", str(data_dir)]
        if wan is None:
            argv = ["-m", "tests.mega_emulator", "--port", "0", *common]
        else:
            shaping = ["--mb-s", str(wan[0]), "--one-way-ms", str(wan[1])]
            argv = ["-m", "benchmarks.wan", *common, *shaping]
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
        # The emulator prints its URL on one line when it accepts connections; read that
        # line in a thread so that a silent or crashed emulator cannot hang the run.
        lines: queue.Queue[bytes] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT_S).decode().strip()
        except queue.Empty:
            line = ""
        if not line.startswith("http"):
            stop_process(process)
            log_file.close()
            raise RuntimeError(f"the emulator did not start; see {log_path.name}")
        return cls(url=line, process=process, log_file=log_file)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_emulator/stats", timeout=10).json()

    def set_faults(self, **faults: object) -> None:
        """Change the emulator's fault settings (``reset=True`` first restores defaults)."""
        answer = httpx.post(f"{self.url}/_emulator/faults", json=faults, timeout=10)
        answer.raise_for_status()

    def stop(self) -> None:
        stop_process(self.process)
        self.log_file.close()


def deployed_argv(root: Path, port: int, app: str = "server:app") -> list[str]:
    """render.yaml's startCommand (the one start command of render.yaml, the Dockerfile
    and DEPLOYMENT.md), bound to 127.0.0.1:<port>, run by this interpreter; ``app`` in
    place of ``server:app`` for the drain app."""
    blueprint = yaml.safe_load((root / "render.yaml").read_text())
    web = next(s for s in blueprint["services"] if s.get("type") == "web")
    command = web["startCommand"].replace("$PORT", str(port)).replace("0.0.0.0:", "127.0.0.1:")
    argv = shlex.split(command)
    if argv[:2] != ["gunicorn", "server:app"]:
        raise RuntimeError(f"render.yaml's start command changed shape: {command!r}")
    return [sys.executable, "-m", "gunicorn", app, *argv[2:]]


def plain_argv(port: int, app: str = "server:app") -> list[str]:
    """One uvicorn process: no workers, no reloader."""
    return [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log"]


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in listed]
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class Server:
    """The server in its own session: one uvicorn process, or gunicorn's master and the
    one worker that serves (WEB_CONCURRENCY=1)."""

    kind: ServerKind
    url: str
    port: int
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    worker_pid: int | None = None  # gunicorn's worker; None for uvicorn

    @property
    def pid(self) -> int:
        """The process that receives, seals and sends the uploads."""
        return self.worker_pid or self.process.pid

    @property
    def pids(self) -> list[int]:
        """Every process of the server (gunicorn's master too), for its CPU time."""
        return [self.process.pid] + ([self.worker_pid] if self.worker_pid else [])

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    @classmethod
    def start(
        cls,
        root: Path,
        env: dict[str, str],
        log_path: Path,
        kind: ServerKind = "uvicorn",
        app: str = "server:app",
    ) -> Server:
        port = free_port()
        token = secrets.token_urlsafe(32)
        full_env = {**os.environ, **env, "AUTH_TOKEN": token}
        if kind == "gunicorn":
            argv = deployed_argv(root, port, app)
            full_env.update(WEB_CONCURRENCY="1", PORT=str(port))
            # prometheus-client's multiprocess files in the run's own temp dir (a given
            # directory is used as gunicorn.conf.py's own would be), so that a server
            # ended the hard way leaves nothing behind.
            metrics = log_path.parent / f"metrics-{port}"
            metrics.mkdir(exist_ok=True)
            full_env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics))
        else:
            argv = plain_argv(port, app)
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            cwd=root,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = cls(kind, f"http://127.0.0.1:{port}", port, token, process, log_path, log_file)
        try:
            server._wait_healthy()
            if kind == "gunicorn":
                workers = children(process.pid)
                if len(workers) != 1:
                    raise RuntimeError(f"gunicorn runs {len(workers)} workers, not 1")
                server.worker_pid = workers[0]
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start-up:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server was not healthy within {START_TIMEOUT_S:.0f} s")

    def log_tail(self, lines: int = 30) -> str:
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        # gunicorn's master stops its worker on SIGTERM; a worker left behind by a killed
        # master is ended by its own pid.
        stop_process(self.process)
        if self.worker_pid is not None and Path(f"/proc/{self.worker_pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker_pid, signal.SIGKILL)
        self.log_file.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; the fields after its closing parenthesis are
    # numbered from 3 (state), so utime and stime (14 and 15) are at 11 and 12 here.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """VmRSS of a pid every ``interval_s`` in a thread; VmHWM (the kernel's own peak) at stop."""

    pid: int
    interval_s: float = 0.02
    samples: list[int] = field(default_factory=list)  # KiB
    hwm_kib: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = status_kib(self.pid, "VmRSS")
            if value is not None:
                self.samples.append(value)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.hwm_kib = status_kib(self.pid, "VmHWM")

    @property
    def peak_sampled_kib(self) -> int:
        return max(self.samples, default=0)


def raise_keyboard_interrupt_on_sigterm() -> None:
    """A SIGTERM (CI cancelling the job) takes the same clean-up path as Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
