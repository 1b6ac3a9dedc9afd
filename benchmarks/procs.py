"""The emulator and the server as real processes, and a sampler of the server's memory.

Every wait here is bounded and every process is stopped by its own id, so a failed or
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


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
    def start(cls, root: Path, data_dir: Path, account: str, log_path: Path) -> Emulator:
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.mega_emulator",
                "--port",
                "0",
                "--seed",
                "1",
                "--account",
                account,
                "--data-dir",
                str(data_dir),
            ],
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


@dataclass
class Server:
    """One uvicorn process (no workers, no reloader: its pid is the one doing the work)."""

    url: str
    port: int
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls, root: Path, env: dict[str, str], log_path: Path, app: str = "server:app"
    ) -> Server:
        port = free_port()
        token = secrets.token_urlsafe(32)
        full_env = {**os.environ, **env, "AUTH_TOKEN": token}
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log"],
            cwd=root,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = cls(f"http://127.0.0.1:{port}", port, token, process, log_path, log_file)
        try:
            server._wait_healthy()
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
        stop_process(self.process)
        self.log_file.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; the fields after its closing parenthesis are
    # numbered from 3 (state), so utime and stime (14 and 15) are at 11 and 12 here.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field_name: str) -> int | None:
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
            value = _status_kib(self.pid, "VmRSS")
            if value is not None:
                self.samples.append(value)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.hwm_kib = _status_kib(self.pid, "VmHWM")

    @property
    def peak_sampled_kib(self) -> int:
        return max(self.samples, default=0)


def raise_keyboard_interrupt_on_sigterm() -> None:
    """A SIGTERM (CI cancelling the job) takes the same clean-up path as Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
