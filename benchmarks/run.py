"""Upload benchmark: the service as deployed (gunicorn, the project's worker, one worker
process) and as one plain uvicorn process, against stock mega.py and async-mega-py on the
same emulator, on loopback and over a shaped wide-area link; the data path against
OpenSSL, the server's CPU per GiB against the crypto floor, its peak memory and /health
latency under load.

    python -m benchmarks.run --quick      # a few minutes on 2 cores
    python -m benchmarks.run              # the full benchmark: every size through every client

Starts the MEGA emulator and the servers as real processes, uploads the same files
through every client, downloads every upload back through its link, decrypts it, checks
its MAC and compares it with the original. Writes RESULTS.md, results.json and
throughput.png. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python benchmarks/run.py` puts only benchmarks/ on the path; the project's own
    # crypto and the verification helper live at the repository root.
    sys.path.insert(0, str(ROOT))

from benchmarks import client, datapath, procs, reference_env, report, stock  # noqa: E402
from tests.mega_verify import verify  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
SLOWED_MB_S = 40.0  # the emulator's speed for the answer-after-last-byte figure
SIZES_MIB = (1, 4, 16, 64, 256, 1024)
QUICK_STOCK_MAX_MIB = 256
REFERENCE_MIB = 256  # the file of the headline ratios and of the data path
RSS_MIB = 1024
HEALTH_UPLOADS = 8
HEALTH_MIB = 32
# The shaped link: per connection, like one TCP connection across a wide-area path.
WAN_MB_S = 4.0
WAN_ONE_WAY_MS = 20.0
WAN_MIB = 256
QUICK_WAN_MIB = 128  # about 40 s per reference client over the link
EMAIL, PASSWORD = "bench@example.com", "emulated benchmark password"
# The server paths, the deployed one first.
PATHS: tuple[procs.ServerKind, ...] = ("gunicorn", "uvicorn")
REFERENCES = ("stock", "async_shipped", "async_lifted")
LIBRARIES = (
    "cryptography",
    "pycryptodome",
    "mega.py",
    "requests",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvicorn-worker",
    "gunicorn",
    "python-multipart",
    "prometheus-client",
    "httpx",
    "matplotlib",
)


class BenchmarkError(RuntimeError):
    """An upload failed or did not verify: the figures of this run are not valid."""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def repetitions(size_mib: int, reference: bool = False) -> int:
    # Small uploads take milliseconds and vary with scheduling, and the reference file
    # carries the headline ratios: the median of several. The reference clients are
    # steady and slow; three 256 MiB uploads through each would cost minutes.
    if size_mib == REFERENCE_MIB and not reference:
        return 5  # the headline and POST/PUT ratios: about a second each, noisy when shared
    if size_mib <= 16:
        return 3
    return 1


def make_files(directory: Path, sizes_mib: list[int]) -> dict[int, Path]:
    """Random (incompressible) files on disk, written once and shared by every uploader."""
    files: dict[int, Path] = {}
    for size in sorted(set(sizes_mib)):
        path = directory / f"random-{size}MiB.bin"
        with path.open("wb") as out:
            for _ in range(size // 16):
                out.write(os.urandom(16 * MiB))
            out.write(os.urandom(size % 16 * MiB))
        files[size] = path
    return files


def series_entry(size: int, times: list[float]) -> dict[str, Any]:
    """The median upload of a size, and every run's MB/s (their spread is the noise)."""
    seconds = statistics.median(times)
    return {
        "mb_s": size * MiB / seconds / 1e6,
        "seconds": seconds,
        "runs": len(times),
        "each_mb_s": sorted(size * MiB / t / 1e6 for t in times),
    }


class Bench:
    """One run: the processes, the files and the figures gathered so far."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.work = Path(tempfile.mkdtemp(prefix="paimon-bench-"))
        stack.callback(shutil.rmtree, self.work, ignore_errors=True)
        shm = Path("/dev/shm")
        on_shm = shm.is_dir() and os.access(shm, os.W_OK)
        self.emulator_root = Path(
            tempfile.mkdtemp(prefix="paimon-bench-emulator-", dir=shm if on_shm else self.work)
        )
        stack.callback(shutil.rmtree, self.emulator_root, ignore_errors=True)
        self.emulator_dir_note = (
            "/dev/shm (tmpfs), so the emulator's writes do not cap the measurement"
            if on_shm
            else "a temp dir on disk (/dev/shm is not available)"
        )
        self.emulator: procs.Emulator | None = None
        self.servers: dict[str, procs.Server] = {}
        self.files: dict[int, Path] = {}
        self.reference_python: Path | None = None
        self.reference_versions: dict[str, str] = {}

    # -- processes ---------------------------------------------------------------------
    def start_emulator(self, wan: tuple[float, float] | None = None) -> procs.Emulator:
        """A fresh emulator (the previous one stopped and its data removed), directly on
        loopback or, with ``wan`` = (MB/s, one-way ms), behind the shaping proxy."""
        if self.emulator is not None:
            self.emulator.stop()
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=self.emulator_root))
        name = "emulator-wan.log" if wan else "emulator.log"
        emulator = procs.Emulator.start(
            ROOT, data_dir, f"{EMAIL}:{PASSWORD}", self.work / name, wan=wan
        )
        self.stack.callback(emulator.stop)
        self.emulator = emulator
        # Every upload of the run stays stored until the clean-ups between phases.
        emulator.set_faults(storage_quota_bytes=1024 * GiB)
        return emulator

    def server_env(self) -> dict[str, str]:
        assert self.emulator is not None
        return {
            "STORAGE_BACKEND": "mega",
            "MEGA_API_URL": self.emulator.url,
            "MEGA_EMAIL": EMAIL,
            "MEGA_PASSWORD": PASSWORD,
            "MAX_UPLOAD_BYTES": "2GiB",
            "MAX_CONCURRENT_UPLOADS": str(HEALTH_UPLOADS),
            "MEGA_SESSION_FILE": str(self.work / "mega-session.json"),
            "TEMP_UPLOAD_DIR": str(self.work / "spool"),
            "LOG_LEVEL": "warning",
        }

    def restart_server(self, path: procs.ServerKind) -> procs.Server:
        """A fresh server of this path (its memory peak is its own), logged in and warm."""
        if path in self.servers:
            self.servers.pop(path).stop()
        server = procs.Server.start(
            ROOT, self.server_env(), self.work / f"server-{path}.log", kind=path
        )
        self.stack.callback(server.stop)
        self.servers[path] = server
        # Log-in and folder creation happen on the first upload; keep them out of the
        # timed ones.
        warm = self.work / "warm-up.bin"
        warm.write_bytes(os.urandom(64 * 1024))
        self.upload_checked(path, "PUT", warm, "warm-up.bin")
        return server

    def free_emulator_space(self) -> None:
        """Delete every stored file (verified already): the emulator keeps ciphertext in
        memory (/dev/shm), and a full run uploads more than 15 GiB."""
        assert self.emulator is not None
        mega = stock.logged_in(self.emulator.url, EMAIL, PASSWORD)
        nodes = mega._api_request({"a": "f", "c": 1})["f"]
        files = [{"a": "d", "n": node["h"]} for node in nodes if node.get("t") == 0]
        for start in range(0, len(files), 50):
            mega._api_request(files[start : start + 50])

    # -- uploads -------------------------------------------------------------------------
    def check(self, link: str, path: Path, name: str) -> None:
        assert self.emulator is not None
        try:
            verify(self.emulator.url, link, path.read_bytes(), name=name)
        except AssertionError as exc:
            raise BenchmarkError(f"{name} did not verify: {exc}") from exc

    def upload_checked(
        self, path: procs.ServerKind, method: str, file: Path, name: str
    ) -> client.UploadTiming:
        server = self.servers[path]
        timing = client.upload(server.url, server.token, method, file, name)
        if timing.status != 200 or timing.body.get("size") != timing.size:
            raise BenchmarkError(
                f"{path} {method} {name}: HTTP {timing.status} {timing.body}\n"
                f"server log:\n{server.log_tail()}"
            )
        # The same bytes sent again are joined to the file stored first (dedup: they still
        # travel to MEGA, only no second node is made), which keeps its own name.
        self.check(timing.body["link"], file, timing.body["filename"])
        return timing

    def server_series(self, sizes: list[int]) -> dict[str, dict[str, dict[str, Any]]]:
        """Every size through both paths, both servers running; per size, the paths and
        methods take turns, so that a change in the machine's load hits all four."""
        series: dict[str, dict[str, dict[str, Any]]] = {
            path: {"post": {}, "put": {}} for path in PATHS
        }
        for size in sizes:
            runs: dict[tuple[str, str], list[client.UploadTiming]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            for rep in range(repetitions(size)):
                # ABBA: the order reverses on every other repetition, so that neither
                # path nor method always follows the other's upload and verification.
                flip = -1 if rep % 2 else 1
                for path in PATHS[::flip]:
                    server = self.servers[path]
                    for method in ("POST", "PUT")[::flip]:
                        name = f"bench-{path}-{method.lower()}-{size}MiB-{rep}.bin"
                        before = server.cpu_seconds()
                        timing = self.upload_checked(path, method, self.files[size], name)
                        # The server's own CPU (utime + stime, every process), per GiB.
                        used = server.cpu_seconds() - before
                        runs.setdefault((path, method), []).append(timing)
                        cpu.setdefault((path, method), []).append(used * GiB / (size * MiB))
            for (path, method), timings in runs.items():
                entry = series_entry(size, [t.seconds for t in timings])
                entry["request_sent_s"] = statistics.median(t.sent_seconds for t in timings)
                entry["cpu_s_per_gib"] = statistics.median(cpu[(path, method)])
                series[path][method.lower()][str(size)] = entry
                say(f"{path} {method} {size} MiB: {entry['mb_s']:.1f} MB/s (verified)")
            self.free_emulator_space()
        return series

    def receive_cost(self, path: procs.ServerKind, size: int) -> dict[str, Any]:
        """CPU per GiB of the server path receiving a body into an app that does nothing
        with it (benchmarks/drain_app.py in place of server:app)."""
        env = {
            "STORAGE_BACKEND": "local",
            "LOCAL_STORAGE_DIR": str(self.work / "drain-files"),
            "TEMP_UPLOAD_DIR": str(self.work / "spool"),
            "MEGA_SESSION_FILE": str(self.work / "drain-session.json"),
            # Served local storage needs its address (the drain app answers no links).
            "PUBLIC_BASE_URL": "http://127.0.0.1",
            "LOG_LEVEL": "warning",
        }
        drain = procs.Server.start(
            ROOT, env, self.work / f"drain-{path}.log", kind=path, app="benchmarks.drain_app:app"
        )
        try:
            costs = []
            for _ in range(3):
                before = drain.cpu_seconds()
                timing = client.upload(drain.url, drain.token, "PUT", self.files[size], "x")
                if timing.status != 200:
                    raise BenchmarkError(f"the {path} drain server answered {timing.status}")
                costs.append((drain.cpu_seconds() - before) * GiB / (size * MiB))
        finally:
            drain.stop()
        return {"cpu_s_per_gib": statistics.median(costs), "runs": len(costs)}

    def slowed_tail(self, path: procs.ServerKind, size: int, mb_s: float) -> dict[str, Any]:
        """Uploads against an emulator slowed to about ``mb_s``: how long the client waits
        for its answer after its last byte, against the whole upload."""
        assert self.emulator is not None
        region_bytes, parallel = datapath.upload_shape()
        # Each region POST is held this long; ``parallel`` of them are in flight at once.
        delay = max(0.0, parallel * region_bytes / (mb_s * 1e6) - 0.01)
        self.emulator.set_faults(reset=True, chunk_delay=delay, storage_quota_bytes=1024 * GiB)
        result: dict[str, Any] = {"target_mb_s": mb_s, "chunk_delay_s": delay, "size_mib": size}
        try:
            self.restart_server(path)
            for method in ("POST", "PUT"):
                name = f"bench-slowed-{path}-{method.lower()}-{size}MiB.bin"
                timing = self.upload_checked(path, method, self.files[size], name)
                tail = timing.seconds - timing.sent_seconds
                result[method] = {
                    "mb_s": timing.mb_per_s,
                    "seconds": timing.seconds,
                    "after_last_byte_s": tail,
                    "after_last_byte_share": tail / timing.seconds,
                }
                say(
                    f"{path}, slowed emulator, {method} {size} MiB: {timing.mb_per_s:.1f} MB/s, "
                    f"answer {tail:.2f} s after the last byte ({tail / timing.seconds:.1%})"
                )
        finally:
            self.emulator.set_faults(reset=True, storage_quota_bytes=1024 * GiB)
        return result

    # -- reference clients ---------------------------------------------------------------
    def stock_series(self, sizes: list[int]) -> dict[str, Any]:
        assert self.emulator is not None
        mega = stock.logged_in(self.emulator.url, EMAIL, PASSWORD)
        series: dict[str, Any] = {}
        for size in sizes:
            times = []
            for rep in range(repetitions(size, reference=True)):
                name = f"stock-{size}MiB-{rep}.bin"
                seconds, link = stock.timed_upload(mega, self.files[size], name)
                self.check(link, self.files[size], name)
                times.append(seconds)
            series[str(size)] = series_entry(size, times)
            say(f"stock mega.py {size} MiB: {series[str(size)]['mb_s']:.1f} MB/s (verified)")
        return series

    def async_series(self, sizes: list[int], limiter: str) -> dict[str, Any]:
        """async-mega-py in the reference environment: a fresh client per upload."""
        assert self.emulator is not None and self.reference_python is not None
        plan = [size for size in sizes for _ in range(repetitions(size, reference=True))]
        # Generous: the shipped limiter allows about 1.7 MB/s once its first 100 requests
        # are spent, and a shaped link about 3 MB/s.
        timeout = 300 + 1.5 * sum(plan)
        uploads, versions = reference_env.async_mega_uploads(
            self.reference_python,
            self.emulator.url,
            EMAIL,
            PASSWORD,
            [self.files[size] for size in plan],
            limiter=limiter,
            timeout_s=timeout,
        )
        self.reference_versions.update(versions)
        times: dict[int, list[float]] = {}
        for size, upload in zip(plan, uploads, strict=True):
            self.check(upload.link, self.files[size], upload.name)
            times.setdefault(size, []).append(upload.seconds)
        series = {str(size): series_entry(size, t) for size, t in times.items()}
        for size in times:
            say(
                f"async-mega-py ({limiter} limiter) {size} MiB: "
                f"{series[str(size)]['mb_s']:.1f} MB/s (verified)"
            )
        return series

    def reference_series(self, key: str, sizes: list[int]) -> dict[str, Any]:
        if key == "stock":
            return self.stock_series(sizes)
        return self.async_series(sizes, key.removeprefix("async_"))

    # -- memory, latency, shaped link ----------------------------------------------------
    def peak_memory(
        self, path: procs.ServerKind, method: str, size: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One upload on a fresh server with its RSS sampled; (rss figures, throughput)."""
        server = self.restart_server(path)
        name = f"bench-rss-{path}-{method.lower()}-{size}MiB.bin"
        with procs.RssSampler(server.pid) as sampler:
            timing = client.upload(server.url, server.token, method, self.files[size], name)
        if timing.status != 200:
            raise BenchmarkError(
                f"{path} {method} {name}: HTTP {timing.status} {timing.body}\n"
                f"server log:\n{server.log_tail()}"
            )
        self.check(timing.body["link"], self.files[size], timing.body["filename"])
        hwm = (sampler.hwm_kib or 0) * 1024 / 1e6
        sampled = sampler.peak_sampled_kib * 1024 / 1e6
        rss: dict[str, Any] = {
            "size_mib": size,
            "vmhwm_mb": hwm,
            "sampled_peak_mb": sampled,
            "peak_mb": max(hwm, sampled),
            "samples": len(sampler.samples),
        }
        if server.worker_pid is not None:
            master = procs.status_kib(server.process.pid, "VmRSS")
            rss["master_rss_mb"] = (master or 0) * 1024 / 1e6
        say(
            f"{path} {method} {size} MiB: {timing.mb_per_s:.1f} MB/s, peak RSS "
            f"{rss['peak_mb']:.1f} MB (verified)"
        )
        return rss, {
            "mb_s": timing.mb_per_s,
            "seconds": timing.seconds,
            "runs": 1,
            "request_sent_s": timing.sent_seconds,
        }

    def health_under_load(self, path: procs.ServerKind, size: int) -> dict[str, Any]:
        server = self.restart_server(path)
        with client.HealthProbe(server.url) as idle:
            time.sleep(1.0)
        file = self.files[size]
        jobs = [
            ("POST" if i % 2 == 0 else "PUT", f"bench-concurrent-{path}-{i}.bin")
            for i in range(HEALTH_UPLOADS)
        ]
        with client.HealthProbe(server.url) as busy, ThreadPoolExecutor(len(jobs)) as pool:
            started = time.perf_counter()
            futures = [
                pool.submit(client.upload, server.url, server.token, method, file, name)
                for method, name in jobs
            ]
            timings = [future.result() for future in futures]
            wall = time.perf_counter() - started
        for (method, name), timing in zip(jobs, timings, strict=True):
            if timing.status != 200:
                raise BenchmarkError(
                    f"{path} concurrent {method} {name}: HTTP {timing.status} {timing.body}"
                )
            self.check(timing.body["link"], file, timing.body["filename"])
        result = {
            "uploads": len(jobs),
            "size_mib": size,
            "mix": "half multipart POST, half streaming PUT",
            "wall_s": wall,
            "aggregate_mb_s": len(jobs) * size * MiB / wall / 1e6,
            "idle": idle.summary(),
            "during_uploads": busy.summary(),
        }
        say(
            f"{path}: /health during {len(jobs)} uploads: p50 "
            f"{result['during_uploads'].get('p50_ms', float('nan')):.2f} ms, p99 "
            f"{result['during_uploads'].get('p99_ms', float('nan')):.2f} ms (all verified)"
        )
        return result

    def wan_run(self, size: int) -> dict[str, Any]:
        """Every client once over the shaped link, on a fresh emulator behind the proxy."""
        mb_s, one_way_ms = self.args.wan_mb_s, self.args.wan_one_way_ms
        self.start_emulator(wan=(mb_s, one_way_ms))
        clients: dict[str, Any] = {}
        for path in PATHS:
            self.restart_server(path)
            for method in ("POST", "PUT"):
                name = f"bench-wan-{path}-{method.lower()}-{size}MiB.bin"
                timing = self.upload_checked(path, method, self.files[size], name)
                clients[f"{path}_{method.lower()}"] = series_entry(size, [timing.seconds])
                say(f"shaped link: {path} {method} {size} MiB: {timing.mb_per_s:.1f} MB/s")
            self.servers.pop(path).stop()
        for key in REFERENCES:
            entry = self.reference_series(key, [size])[str(size)]
            clients[key] = entry
            say(f"shaped link: {key} {size} MiB: {entry['mb_s']:.1f} MB/s")
        return {
            "mb_s_per_connection": mb_s,
            "one_way_ms": one_way_ms,
            "size_mib": size,
            "parallel": datapath.upload_shape()[1],
            "clients": clients,
        }

    # -- profile -------------------------------------------------------------------------
    def profile(self, path: procs.ServerKind, method: str, size: int) -> dict[str, Any]:
        """py-spy on the server process doing the work, during one upload: on-CPU
        samples by the source file of the innermost frame."""
        from benchmarks import profile_server

        server = self.restart_server(path)
        collapsed = self.work / f"profile-{path}-{method.lower()}.txt"
        with profile_server.recording(reference_env.py_spy(), server.pid, collapsed):
            self.upload_checked(path, method, self.files[size], f"bench-profile-{path}.bin")
        return profile_server.by_file(collapsed, top=12)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kib = 0
    try:
        openssl_cli = subprocess.run(
            ["openssl", "version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        openssl_cli = "openssl: not found"
    from cryptography.hazmat.backends.openssl import backend

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": mem_kib / 2**20,
        "python": platform.python_version(),
        "openssl_cli": openssl_cli,
        "cryptography_openssl": backend.openssl_version_text(),
        "libraries": versions,
    }


def code_description(label: str | None) -> str:
    if label:
        return label
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "server.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"
    if commit.returncode != 0:
        return "unknown (not a git checkout)"
    state = " with uncommitted changes in app/" if dirty.stdout.strip() else ""
    return f"commit {commit.stdout.strip()}{state}"


def command_line() -> str:
    """The command as typed from the repository root, without ``--out``: where the
    results were written says nothing about what was measured, and may be a machine
    path."""
    argv = sys.argv[1:]
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            shown.append(arg)
    script = Path(sys.argv[0])
    if script.name == "run.py" and script.resolve().parent == ROOT / "benchmarks":
        return shlex.join(["python", "-m", "benchmarks.run", *shown])
    return shlex.join(["python", script.name, *shown])


def load_average() -> float | None:
    """The 1-minute load: other work on the machine shares the cores with the run."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def notes(args: argparse.Namespace, bench: Bench, stock_max: int, wan_mib: int) -> list[str]:
    region_bytes, parallel = datapath.upload_shape()
    return [
        "Server paths: **deployed** is render.yaml's start command, `gunicorn server:app "
        "--config gunicorn.conf.py --bind 127.0.0.1:<port>`, with WEB_CONCURRENCY=1: "
        "gunicorn's master and one worker of the project's class "
        "(app.serving.worker.PaimonWorker: uvicorn's worker with the service's HTTP protocol "
        "limits), its access log on, prometheus-client in multiprocess mode as "
        "gunicorn.conf.py sets it up. **plain uvicorn** is `python -m uvicorn server:app "
        "--no-access-log`, one process, uvicorn's own protocol. Both get the same "
        "environment (LOG_LEVEL=warning). Emulator, servers and the benchmark's client are "
        f"separate processes sharing the {os.cpu_count()} cores, so figures are for the "
        "whole system on one box.",
        f"The emulator stores ciphertext in {bench.emulator_dir_note}; stored files are "
        "deleted between phases, after they were verified. The server spools multipart and "
        "raw bodies to TEMP_UPLOAD_DIR in a temp dir on disk.",
        "The upload client is a raw HTTP/1.1 socket that sends the file from disk with "
        "sendfile (Content-Length always set, Connection: close); time runs from the first "
        "request byte to the last byte of the JSON answer. Files are random bytes, in the "
        "page cache after they are written.",
        "Each server is warmed up with one 64 KiB upload after start (log-in and folder "
        "creation are not timed). Both paths run side by side for the throughput series; "
        "per size the two paths and the two methods take turns, in reverse order on every "
        "other repetition. Server: median of 5 "
        f"uploads for {REFERENCE_MIB} MiB, of 3 for 16 MiB and less, one upload otherwise; "
        "reference clients: median of 3 up to 16 MiB, one upload otherwise. The 1024 MiB "
        "server points are the uploads of the memory test.",
        "Every upload (servers and reference clients) is downloaded back through its link "
        "with tests/mega_verify.py (pycryptodome, independent of the app's crypto), "
        "decrypted, MAC-checked and compared byte for byte; verification is not timed.",
        "Stock mega.py 1.0.8: `Mega.upload` unchanged; only `_api_request` posts to "
        "<emulator>/cs (same body, params and EAGAIN retry). Its link is built from the "
        "node it made ('l' + the node key). Timed: `upload()` alone (log-in before). "
        + (
            f"Quick mode: reference clients only up to {stock_max} MiB."
            if args.quick
            else "Full mode: every size."
        ),
        "async-mega-py 2.5.0 (benchmarks/async_mega_driver.py, in the benchmark's own "
        "virtual environment from benchmarks/requirements-reference.txt): "
        "`MegaNzClient.upload(path, root)` unchanged, timed alone; a fresh client logs in "
        "before each upload. Only the class-level API address (`MegaAPI._entrypoint`) is "
        "pointed at the emulator. It sends one chunk at a time (128 KiB growing to 1 MiB) "
        "on one connection, sealing with pycryptodome in the event loop. *As shipped*: its "
        "`AsyncLimiter(100, 60)` per client, entered by every request, chunks included: "
        "100 requests at once, then 100 a minute (about 1.7 MB/s); a fresh client starts "
        "with the 100, so uploads up to about 95 MiB do not meet it. *Limiter lifted*: "
        "`MegaAPI._rate_limiter` replaced, in the benchmark's process only, by a context "
        "that never waits. Over the shaped link a request takes about 0.3 s, so the "
        "limiter (100 at once, then one every 0.6 s) holds the shipped client back only "
        "after about a minute, some 190 MiB.",
        f"Shaped link (benchmarks/wan.py): a fresh emulator behind a loopback proxy that "
        f"holds every TCP connection to {args.wan_mb_s:g} MB/s in the upload direction and "
        f"delays each direction by {args.wan_one_way_ms:g} ms (a {2 * args.wan_one_way_ms:g} "
        "ms round trip); the emulator hands out the proxy's address in its upload URLs, so "
        f"every byte to MEGA crosses it. One {wan_mib} MiB upload per client, each verified. "
        "The benchmark's client reaches the servers directly on loopback: the link that is "
        "shaped is the one to MEGA, where the service sends "
        f"{parallel} regions of {region_bytes // MiB} MiB at once on their own connections "
        "and the reference clients one chunk at a time on one. Slow start and loss are not "
        "modelled.",
        "Data path: `app.storage.mega.crypto.seal_region` per region of the service's "
        "region size (the region copied into a reused buffer as a file read would fill "
        "it, then MACed and encrypted in place, as upload.py does) over an in-memory "
        f"{REFERENCE_MIB} MiB buffer, best of 2; one thread, and one worker per core (the "
        "upload pipeline seals regions in worker threads too).",
        "OpenSSL reference: `openssl speed -evp aes-128-cbc -seconds 3` (single core), the "
        "16384-byte column. MEGA needs CTR for the data and a CBC-MAC of every byte, so an "
        "ideal data path is bounded by CBC (serial) plus CTR (parallel in AES-NI).",
        "Library comparison: a fresh cipher object per 1 MiB buffer (as the data path makes "
        "one per region and per chunk), ~1 s per figure.",
        "Peak RSS: a fresh server per upload; /proc/<pid>/status VmRSS of the process doing "
        "the work (gunicorn's worker, or the uvicorn process) sampled every 20 ms in a "
        "thread and VmHWM (the kernel's high-water mark since start) read after the "
        "answer; the larger of the two is the peak. gunicorn's master is reported apart. "
        "MB = 10^6 bytes.",
        f"/health: a thread GETs /health every 10 ms on its own keep-alive connection "
        f"(http.client) while {HEALTH_UPLOADS} uploads of the same {HEALTH_MIB} MiB file run "
        "at once (half POST, half PUT) on a fresh server of each path; latencies are "
        "nearest-rank percentiles and include the probe's own client time. Idle figures: "
        "1 s before.",
        "Server CPU: utime + stime of every server process (gunicorn: master and worker) "
        f"from /proc/<pid>/stat around each {REFERENCE_MIB} MiB upload (median of the "
        "runs), per GiB of file. It includes receiving the body, parsing, the SHA-256 of "
        "the answer, the temporary copy that makes a streamed body replayable, sealing and "
        "sending every region. Floor: one core's SHA-256 + AES-128-CBC + AES-128-CTR over "
        "the same number of bytes in 1 MiB buffers (cryptography, hashlib), process time, "
        "best of 2, measured in the same run. Loopback transfer: the CPU of sending and "
        "receiving the same bytes once over a 127.0.0.1 TCP connection in one process: the "
        "server receives every byte from the client and sends every byte to MEGA, kernel "
        "work the floor leaves out. Receiving alone: the same PUT into "
        "benchmarks/drain_app.py, an app that only counts the body's bytes, served by each "
        "path (median of 3).",
        f"Slowed emulator: every region POST held for chunk_delay = parallel x region / "
        f"{SLOWED_MB_S:.0f} MB/s (minus 10 ms of transfer), on a fresh server of each path; "
        "the wait is the time from the client's last request byte (sendfile returned) to "
        "the last byte of the answer.",
        'Dedup: the service keeps one file per content (README, "Records"), so an upload '
        "of bytes it stored before (each size's file goes through both paths and methods) "
        "is joined to that file: its bytes still travel to MEGA in full and are measured "
        "alike, only no second node is made; each answer is verified against the file it "
        "names.",
    ]


def ratios_of(results: dict[str, Any], reference: int) -> dict[str, float | None]:
    """Every ratio the report states, from figures measured in this run."""
    ref = str(reference)
    paths, references = results["paths"], results["references"]
    ratios: dict[str, float | None] = {}

    def divide(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    floor = results["cpu_floor"]["cpu_s_per_gib"]
    for path in PATHS:
        for method in ("post", "put"):
            entry = paths[path]["throughput"][method].get(ref, {})
            for key in REFERENCES:
                other = references[key].get(ref, {}).get("mb_s")
                ratios[f"{path}_{method}_vs_{key}"] = divide(entry.get("mb_s"), other)
            ratios[f"{path}_{method}_cpu_vs_floor"] = divide(entry.get("cpu_s_per_gib"), floor)
        post = paths[path]["throughput"]["post"].get(ref, {}).get("mb_s")
        put = paths[path]["throughput"]["put"].get(ref, {}).get("mb_s")
        ratios[f"{path}_post_vs_put"] = divide(post, put)
    for method in ("post", "put"):
        deployed = paths["gunicorn"]["throughput"][method].get(ref, {})
        plain = paths["uvicorn"]["throughput"][method].get(ref, {})
        ratios[f"deployed_vs_plain_{method}"] = divide(deployed.get("mb_s"), plain.get("mb_s"))
        ratios[f"deployed_vs_plain_{method}_cpu"] = divide(
            deployed.get("cpu_s_per_gib"), plain.get("cpu_s_per_gib")
        )
    wan = results.get("wan", {}).get("clients", {})
    for path in PATHS:
        for method in ("post", "put"):
            mine = wan.get(f"{path}_{method}", {}).get("mb_s")
            for key in REFERENCES:
                ratios[f"wan_{path}_{method}_vs_{key}"] = divide(mine, wan.get(key, {}).get("mb_s"))
    ratios["data_path_vs_openssl_cbc"] = (
        results["data_path"]["single_thread_mb_s"] / results["openssl"]["mb_s"]
    )
    ratios["data_path_threaded_vs_openssl_cbc"] = (
        results["data_path"]["threaded_mb_s"] / results["openssl"]["mb_s"]
    )
    return ratios


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = [s for s in (args.sizes or SIZES_MIB) if s != args.rss_mib]
    stock_max = QUICK_STOCK_MAX_MIB if args.quick else max([*sizes, args.rss_mib])
    reference_sizes = [s for s in [*sizes, args.rss_mib] if s <= stock_max]
    reference = REFERENCE_MIB if REFERENCE_MIB in sizes else max(sizes)
    wan_mib = args.wan_mib or (QUICK_WAN_MIB if args.quick else WAN_MIB)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "mode": "quick" if args.quick else "full",
        "code": code_description(args.label),
        "machine": machine(),
        "stock_max_mib": stock_max,
        "load_before": load_average(),
        "path_labels": report.PATH_LABELS,
    }
    with ExitStack() as stack:
        bench = Bench(args, stack)
        results["emulator_data_dir"] = bench.emulator_dir_note
        bench.reference_python = reference_env.ensure(say=say)
        all_sizes = [*sizes, args.rss_mib, args.health_mib, wan_mib]
        say(f"writing test files to a temp dir ({sum(set(all_sizes))} MiB)")
        bench.files = make_files(bench.work, all_sizes)

        say("data path: encrypt + MAC in memory, OpenSSL speed, library comparison")
        results["data_path"] = datapath.data_path(reference * MiB)
        results["openssl"] = datapath.openssl_cbc()
        results["libraries"] = datapath.library_comparison()
        say(
            f"data path {results['data_path']['single_thread_mb_s']:.0f} MB/s (1 thread), "
            f"OpenSSL CBC {results['openssl']['mb_s']:.0f} MB/s"
        )

        bench.start_emulator()
        references: dict[str, Any] = {}
        for key in REFERENCES:
            say(f"{report.REFERENCE_LABELS[key]}, sizes {reference_sizes} MiB")
            references[key] = bench.reference_series(key, reference_sizes)
            bench.free_emulator_space()
        results["references"] = references
        results["reference_versions"] = bench.reference_versions

        # Right before the servers' uploads, so that both see the same load on the machine.
        results["cpu_floor"] = datapath.cpu_floor(reference * MiB)
        results["loopback"] = datapath.loopback_cpu(reference * MiB)
        results["receive"] = {path: bench.receive_cost(path, reference) for path in PATHS}
        for path in PATHS:
            bench.restart_server(path)
        say(f"servers ({', '.join(PATHS)}), sizes {sizes} MiB")
        series = bench.server_series(sizes)
        paths: dict[str, Any] = {path: {"throughput": series[path]} for path in PATHS}
        for path in PATHS:
            paths[path]["rss"] = {}
            for method in ("PUT", "POST"):
                rss, point = bench.peak_memory(path, method, args.rss_mib)
                paths[path]["rss"][method] = rss
                paths[path]["throughput"][method.lower()][str(args.rss_mib)] = point
            bench.free_emulator_space()
        for path in PATHS:
            paths[path]["health"] = bench.health_under_load(path, args.health_mib)
            paths[path]["slowed"] = bench.slowed_tail(path, reference, SLOWED_MB_S)
            bench.free_emulator_space()
        if args.profile:
            for path in PATHS:
                say(f"profiling {path} during a {reference} MiB PUT (py-spy)")
                paths[path]["profile"] = bench.profile(path, "PUT", reference)
            bench.free_emulator_space()
        results["paths"] = paths
        stats = bench.emulator.stats() if bench.emulator else {}
        results["emulator_stats"] = {k: v for k, v in stats.items() if isinstance(v, int | float)}
        for server in list(bench.servers.values()):
            server.stop()
        bench.servers.clear()

        if not args.no_wan:
            say(
                f"shaped link: {args.wan_mb_s:g} MB/s per connection, {args.wan_one_way_ms:g} "
                f"ms each way, {wan_mib} MiB through every client"
            )
            results["wan"] = bench.wan_run(wan_mib)
        results["notes"] = notes(args, bench, stock_max, wan_mib)

    results["ratios"] = ratios_of(results, reference)
    results["reference_mib"] = reference
    results["duration_s"] = time.perf_counter() - started
    results["load_after"] = load_average()
    results["targets"] = report.target_lines(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "The committed results come from a run without size options, in quick or full "
            "mode; for the full benchmark run `python -m benchmarks.run` on a machine with "
            "nothing else running (about 25 minutes on 2 cores: async-mega-py's limiter "
            "alone holds a 1 GiB upload for about 9 minutes). The first run installs the "
            "reference clients into benchmarks/.venv (network access to PyPI needed once)."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"reference clients only up to {QUICK_STOCK_MAX_MIB} MiB, the shaped link at "
        f"{QUICK_WAN_MIB} MiB (full mode: every size, {WAN_MIB} MiB)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks",
        help="directory for RESULTS.md, results.json, throughput.png",
    )
    parser.add_argument("--label", help="what code was measured, if not this git checkout")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record where each server path spends its CPU during a PUT (py-spy)",
    )
    parser.add_argument(
        "--wan-mb-s",
        type=float,
        default=WAN_MB_S,
        help="shaped link: upload cap per connection in MB/s (default %(default)s)",
    )
    parser.add_argument(
        "--wan-one-way-ms",
        type=float,
        default=WAN_ONE_WAY_MS,
        help="shaped link: delay each way in ms (default %(default)s)",
    )
    parser.add_argument("--wan-mib", type=int, help="shaped link: file size in MiB")
    parser.add_argument("--no-wan", action="store_true", help="skip the shaped-link run")
    # Smaller runs for trying the script out; the committed results use the defaults.
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated file sizes in MiB (default: " + ",".join(map(str, SIZES_MIB)) + ")",
    )
    parser.add_argument(
        "--rss-mib", type=int, default=RSS_MIB, help="size of the memory-test uploads"
    )
    parser.add_argument(
        "--health-mib",
        type=int,
        default=HEALTH_MIB,
        help="size of each concurrent upload in the /health test",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.raise_keyboard_interrupt_on_sigterm()
    try:
        results = run(args)
    except KeyboardInterrupt:
        say("interrupted; processes stopped and temp files removed")
        return 130
    except (BenchmarkError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        say(f"benchmark failed: {exc}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    chart_note = report.write_chart(results, args.out / "throughput.png")
    report.write_json(results, args.out / "results.json")
    report.write_markdown(results, args.out / "RESULTS.md", chart_note)
    for line in results["targets"]:
        print(line)
    say(
        f"wrote RESULTS.md, results.json and the chart to {args.out} "
        f"in {results['duration_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
