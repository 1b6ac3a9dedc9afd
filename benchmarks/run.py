"""Upload benchmark: the server (multipart POST and streaming PUT) against stock mega.py,
the data path against OpenSSL, the server's peak memory and /health latency under load.

    python benchmarks/run.py [--quick] [--out benchmarks]

Starts the MEGA emulator and the server as real processes, uploads the same files
through both, downloads every upload back through its link, decrypts it, checks its MAC
and compares it with the original. Writes RESULTS.md, results.json and throughput.png.
See benchmarks/README.md.
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

from app.storage.mega.upload import UploadLimits  # noqa: E402
from benchmarks import client, datapath, procs, report, stock  # noqa: E402
from tests.mega_verify import verify  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
SLOWED_MB_S = 40.0  # the emulator's speed for the answer-after-last-byte figure
SIZES_MIB = (1, 4, 16, 64, 256, 1024)
QUICK_STOCK_MAX_MIB = 256
REFERENCE_MIB = 256  # the file of the headline ratio and of the data path
RSS_MIB = 1024
HEALTH_UPLOADS = 8
HEALTH_MIB = 32
EMAIL, PASSWORD = "bench@example.com", "emulated benchmark password"
LIBRARIES = (
    "cryptography",
    "pycryptodome",
    "mega.py",
    "requests",
    "fastapi",
    "starlette",
    "uvicorn",
    "python-multipart",
    "httpx",
    "matplotlib",
)


class BenchmarkError(RuntimeError):
    """An upload failed or did not verify: the figures of this run are not valid."""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def repetitions(size_mib: int, stock: bool = False) -> int:
    # Small uploads take milliseconds and vary with scheduling, and the reference file
    # carries the headline ratio: the median of three. Stock mega.py is bound by its
    # own Python loop and steady; three 256 MiB uploads through it would cost minutes.
    if size_mib == REFERENCE_MIB and not stock:
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


class Bench:
    """One run: the processes, the files and the figures gathered so far."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.work = Path(tempfile.mkdtemp(prefix="paimon-bench-"))
        stack.callback(shutil.rmtree, self.work, ignore_errors=True)
        shm = Path("/dev/shm")
        on_shm = shm.is_dir() and os.access(shm, os.W_OK)
        self.emulator_dir = Path(
            tempfile.mkdtemp(prefix="paimon-bench-emulator-", dir=shm if on_shm else self.work)
        )
        stack.callback(shutil.rmtree, self.emulator_dir, ignore_errors=True)
        self.emulator_dir_note = (
            "/dev/shm (tmpfs), so the emulator's writes do not cap the measurement"
            if on_shm
            else "a temp dir on disk (/dev/shm is not available)"
        )
        self.emulator: procs.Emulator | None = None
        self.server: procs.Server | None = None
        self.files: dict[int, Path] = {}
        self.originals: dict[int, bytes] = {}

    # -- processes ---------------------------------------------------------------------
    def start_emulator(self) -> procs.Emulator:
        emulator = procs.Emulator.start(
            ROOT, self.emulator_dir, f"{EMAIL}:{PASSWORD}", self.work / "emulator.log"
        )
        self.stack.callback(emulator.stop)
        self.emulator = emulator
        return emulator

    def restart_server(self) -> procs.Server:
        """A fresh single uvicorn process (its memory peak is its own), logged in and warm."""
        if self.server is not None:
            self.server.stop()
        assert self.emulator is not None
        spool = self.work / "spool"
        env = {
            "STORAGE_BACKEND": "mega",
            "MEGA_API_URL": self.emulator.url,
            "MEGA_EMAIL": EMAIL,
            "MEGA_PASSWORD": PASSWORD,
            "MAX_UPLOAD_BYTES": "2GiB",
            "MAX_CONCURRENT_UPLOADS": str(HEALTH_UPLOADS),
            "MEGA_SESSION_FILE": str(self.work / "mega-session.json"),
            "TEMP_UPLOAD_DIR": str(spool),
            "LOG_LEVEL": "warning",
        }
        server = procs.Server.start(ROOT, env, self.work / "server.log")
        self.stack.callback(server.stop)
        self.server = server
        # Log-in and folder creation happen on the first upload; keep them out of the
        # timed ones.
        warm = self.work / "warm-up.bin"
        warm.write_bytes(os.urandom(64 * 1024))
        self.upload_checked("PUT", warm, "warm-up.bin")
        return server

    # -- uploads -------------------------------------------------------------------------
    def original(self, path: Path) -> bytes:
        return path.read_bytes()

    def check(self, link: str, path: Path, name: str) -> None:
        assert self.emulator is not None
        try:
            verify(self.emulator.url, link, path.read_bytes(), name=name)
        except AssertionError as exc:
            raise BenchmarkError(f"{name} did not verify: {exc}") from exc

    def upload_checked(self, method: str, path: Path, name: str) -> client.UploadTiming:
        assert self.server is not None
        timing = client.upload(self.server.url, self.server.token, method, path, name)
        if timing.status != 200 or timing.body.get("size") != timing.size:
            raise BenchmarkError(
                f"{method} {name}: HTTP {timing.status} {timing.body}\n"
                f"server log:\n{self.server.log_tail()}"
            )
        self.check(timing.body["link"], path, name)
        return timing

    def server_series(self, sizes: list[int]) -> dict[str, dict[str, Any]]:
        series: dict[str, dict[str, Any]] = {"server_post": {}, "server_put": {}}
        for size in sizes:
            # POST and PUT take turns, so that a change in the machine's load hits both.
            runs: dict[str, list[client.UploadTiming]] = {"POST": [], "PUT": []}
            cpu: dict[str, list[float]] = {"POST": [], "PUT": []}
            assert self.server is not None
            for rep in range(repetitions(size)):
                for method in ("POST", "PUT"):
                    name = f"bench-{method.lower()}-{size}MiB-{rep}.bin"
                    before = procs.cpu_seconds(self.server.pid)
                    runs[method].append(self.upload_checked(method, self.files[size], name))
                    # The server's own CPU (utime + stime), per GiB of file.
                    used = procs.cpu_seconds(self.server.pid) - before
                    cpu[method].append(used * GiB / (size * MiB))
            for method in ("POST", "PUT"):
                seconds = statistics.median(t.seconds for t in runs[method])
                entry = {
                    "mb_s": size * MiB / seconds / 1e6,
                    "seconds": seconds,
                    "runs": len(runs[method]),
                    "request_sent_s": statistics.median(t.sent_seconds for t in runs[method]),
                    "cpu_s_per_gib": statistics.median(cpu[method]),
                }
                series[f"server_{method.lower()}"][str(size)] = entry
                say(f"server {method} {size} MiB: {entry['mb_s']:.1f} MB/s (verified)")
        return series

    def receive_cost(self, size: int) -> dict[str, Any]:
        """CPU per GiB of uvicorn receiving a body into an app that does nothing with it."""
        drain = procs.Server.start(
            ROOT, {}, self.work / "drain.log", app="benchmarks.drain_app:app"
        )
        try:
            costs = []
            for _ in range(3):
                before = procs.cpu_seconds(drain.pid)
                timing = client.upload(drain.url, drain.token, "PUT", self.files[size], "x")
                if timing.status != 200:
                    raise BenchmarkError(f"the drain server answered {timing.status}")
                costs.append((procs.cpu_seconds(drain.pid) - before) * GiB / (size * MiB))
        finally:
            drain.stop()
        return {"cpu_s_per_gib": statistics.median(costs), "runs": len(costs)}

    def slowed_tail(self, size: int, mb_s: float) -> dict[str, Any]:
        """Uploads against an emulator slowed to about ``mb_s``: how long the client waits
        for its answer after its last byte, against the whole upload."""
        assert self.emulator is not None
        limits = UploadLimits()
        # Each region POST is held this long; ``parallel`` of them are in flight at once.
        delay = max(0.0, limits.parallel * limits.region_bytes / (mb_s * 1e6) - 0.01)
        self.emulator.set_faults(reset=True, chunk_delay=delay)
        result: dict[str, Any] = {"target_mb_s": mb_s, "chunk_delay_s": delay, "size_mib": size}
        try:
            self.restart_server()
            for method in ("POST", "PUT"):
                name = f"bench-slowed-{method.lower()}-{size}MiB.bin"
                timing = self.upload_checked(method, self.files[size], name)
                tail = timing.seconds - timing.sent_seconds
                result[method] = {
                    "mb_s": timing.mb_per_s,
                    "seconds": timing.seconds,
                    "after_last_byte_s": tail,
                    "after_last_byte_share": tail / timing.seconds,
                }
                say(
                    f"slowed emulator, {method} {size} MiB: {timing.mb_per_s:.1f} MB/s, answer "
                    f"{tail:.2f} s after the last byte ({tail / timing.seconds:.1%} of the upload)"
                )
        finally:
            self.emulator.set_faults(reset=True)
        return result

    def stock_series(self, sizes: list[int]) -> dict[str, Any]:
        assert self.emulator is not None
        mega = stock.logged_in(self.emulator.url, EMAIL, PASSWORD)
        series: dict[str, Any] = {}
        for size in sizes:
            times = []
            for rep in range(repetitions(size, stock=True)):
                name = f"stock-{size}MiB-{rep}.bin"
                seconds, link = stock.timed_upload(mega, self.files[size], name)
                self.check(link, self.files[size], name)
                times.append(seconds)
            seconds = statistics.median(times)
            series[str(size)] = {
                "mb_s": size * MiB / seconds / 1e6,
                "seconds": seconds,
                "runs": len(times),
            }
            say(f"stock mega.py {size} MiB: {series[str(size)]['mb_s']:.1f} MB/s (verified)")
        return series

    def peak_memory(self, method: str, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """One upload on a fresh server with its RSS sampled; (rss figures, throughput)."""
        server = self.restart_server()
        name = f"bench-rss-{method.lower()}-{size}MiB.bin"
        with procs.RssSampler(server.pid) as sampler:
            timing = client.upload(server.url, server.token, method, self.files[size], name)
        if timing.status != 200:
            raise BenchmarkError(
                f"{method} {name}: HTTP {timing.status} {timing.body}\n"
                f"server log:\n{server.log_tail()}"
            )
        self.check(timing.body["link"], self.files[size], name)
        hwm = (sampler.hwm_kib or 0) * 1024 / 1e6
        sampled = sampler.peak_sampled_kib * 1024 / 1e6
        rss = {
            "size_mib": size,
            "vmhwm_mb": hwm,
            "sampled_peak_mb": sampled,
            "peak_mb": max(hwm, sampled),
            "samples": len(sampler.samples),
        }
        say(
            f"server {method} {size} MiB: {timing.mb_per_s:.1f} MB/s, peak RSS "
            f"{rss['peak_mb']:.1f} MB (verified)"
        )
        return rss, {
            "mb_s": timing.mb_per_s,
            "seconds": timing.seconds,
            "runs": 1,
            "request_sent_s": timing.sent_seconds,
        }

    def health_under_load(self, size: int) -> dict[str, Any]:
        server = self.restart_server()
        with client.HealthProbe(server.url) as idle:
            time.sleep(1.0)
        path = self.files[size]
        jobs = [
            ("POST" if i % 2 == 0 else "PUT", f"bench-concurrent-{i}.bin")
            for i in range(HEALTH_UPLOADS)
        ]
        with client.HealthProbe(server.url) as busy, ThreadPoolExecutor(len(jobs)) as pool:
            started = time.perf_counter()
            futures = [
                pool.submit(client.upload, server.url, server.token, method, path, name)
                for method, name in jobs
            ]
            timings = [future.result() for future in futures]
            wall = time.perf_counter() - started
        for (method, name), timing in zip(jobs, timings, strict=True):
            if timing.status != 200:
                raise BenchmarkError(
                    f"concurrent {method} {name}: HTTP {timing.status} {timing.body}"
                )
            self.check(timing.body["link"], path, name)
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
            f"/health during {len(jobs)} uploads: p50 "
            f"{result['during_uploads'].get('p50_ms', float('nan')):.2f} ms, p99 "
            f"{result['during_uploads'].get('p99_ms', float('nan')):.2f} ms (all verified)"
        )
        return result


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
    def shown(arg: str) -> str:
        # Paths under the checkout are shown relative to it: no machine paths in results.
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(ROOT):
            return str(path.resolve().relative_to(ROOT))
        return arg

    return shlex.join(["python", *(shown(a) for a in sys.argv)])


def load_average() -> float | None:
    """The 1-minute load: other work on the machine shares the cores with the run."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def notes(args: argparse.Namespace, bench: Bench, stock_max: int) -> list[str]:
    return [
        "Emulator and server are separate processes on this machine "
        "(`python -m tests.mega_emulator`, `python -m uvicorn server:app --no-access-log`, "
        "one process, no workers); the client runs in the benchmark process. All three "
        f"share the {os.cpu_count()} cores, so figures are for the whole system on one box.",
        f"The emulator stores ciphertext in {bench.emulator_dir_note}. The server spools "
        "multipart and raw bodies to TEMP_UPLOAD_DIR in a temp dir on disk.",
        "The upload client is a raw HTTP/1.1 socket that sends the file from disk with "
        "sendfile (Content-Length always set, Connection: close); time runs from the first "
        "request byte to the last byte of the JSON answer. Files are random bytes, in the "
        "page cache after they are written.",
        "Each server is warmed up with one 64 KiB upload after start (log-in and folder "
        "creation are not timed). Server: median of 5 uploads for "
        f"{REFERENCE_MIB} MiB (POST and PUT taking turns), of 3 for 16 MiB and less, one "
        "upload otherwise; stock mega.py: median of 3 up to 16 MiB. "
        "The 1024 MiB server points are the uploads of the memory test.",
        "Every upload (server and stock mega.py) is downloaded back through its link with "
        "tests/mega_verify.py (pycryptodome, independent of the app's crypto), decrypted, "
        "MAC-checked and compared byte for byte; verification is not timed.",
        "Stock mega.py 1.0.8: `Mega.upload` unchanged; only `_api_request` posts to "
        "<emulator>/cs (same body, params and EAGAIN retry). Its link is built from the "
        "node it made ('l' + the node key). Timed: `upload()` alone (log-in before). "
        + (
            f"Quick mode: stock mega.py only up to {stock_max} MiB."
            if args.quick
            else "Full mode: every size."
        ),
        "Data path: `app.storage.mega.crypto.seal_region` per region of "
        "UploadLimits.region_bytes (the region copied into a reused buffer as a file read "
        "would fill it, then MACed and encrypted in place, as upload.py does) over an "
        f"in-memory {REFERENCE_MIB} MiB buffer, best of 2; one thread, and one worker per "
        "core (the upload pipeline seals regions in worker threads too).",
        "OpenSSL reference: `openssl speed -evp aes-128-cbc -seconds 3` (single core), the "
        "16384-byte column. MEGA needs CTR for the data and a CBC-MAC of every byte, so an "
        "ideal data path is bounded by CBC (serial) plus CTR (parallel in AES-NI).",
        "Library comparison: a fresh cipher object per 1 MiB buffer (as the data path makes "
        "one per region and per chunk), ~1 s per figure.",
        "Peak RSS: a fresh server per upload; /proc/<pid>/status VmRSS sampled every 20 ms in "
        "a thread and VmHWM (the kernel's high-water mark since start) read after the "
        "answer; the larger of the two is the peak. MB = 10^6 bytes.",
        f"/health: a thread GETs /health every 10 ms on its own keep-alive connection "
        f"(http.client) while {HEALTH_UPLOADS} uploads of the same {HEALTH_MIB} MiB file run "
        "at once (half POST, half PUT) on a fresh server; latencies are nearest-rank "
        "percentiles and include the probe's own client time. Idle figures: 1 s before.",
        "Server CPU: utime + stime of the server process from /proc/<pid>/stat around each "
        f"{REFERENCE_MIB} MiB upload (median of the runs), per GiB of file. It includes "
        "receiving the body, parsing, the SHA-256 of the answer, the temporary copy that "
        "makes a streamed body replayable, sealing and sending every region. Floor: one "
        "core's SHA-256 + AES-128-CBC + AES-128-CTR over the same number of bytes in 1 MiB "
        "buffers (cryptography, hashlib), process time, best of 2, measured in the same run. "
        "Loopback transfer: the CPU of sending and receiving the same bytes once over a "
        "127.0.0.1 TCP connection in one process: the server receives every byte from the "
        "client and sends every byte to MEGA, kernel work the floor leaves out. Receiving "
        "alone: the same PUT into benchmarks/drain_app.py under uvicorn, an app that only "
        "counts the body's bytes (median of 3).",
        f"Slowed emulator: every region POST held for chunk_delay = parallel x region / "
        f"{SLOWED_MB_S:.0f} MB/s (minus 10 ms of transfer), on a fresh server; the wait is "
        "the time from the client's last request byte (sendfile returned) to the last byte "
        "of the answer.",
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = (
        [s for s in args.sizes if s != args.rss_mib]
        if args.sizes
        else [s for s in SIZES_MIB if s != args.rss_mib]
    )
    stock_max = QUICK_STOCK_MAX_MIB if args.quick else max([*sizes, args.rss_mib])
    stock_sizes = [s for s in [*sizes, args.rss_mib] if s <= stock_max]
    reference = REFERENCE_MIB if REFERENCE_MIB in sizes else max(sizes)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "mode": "quick" if args.quick else "full",
        "code": code_description(args.label),
        "machine": machine(),
        "stock_max_mib": stock_max,
        "load_before": load_average(),
    }
    with ExitStack() as stack:
        bench = Bench(args, stack)
        results["emulator_data_dir"] = bench.emulator_dir_note
        say(
            f"writing test files to a temp dir ({sum({*sizes, args.rss_mib, args.health_mib})} MiB)"
        )
        bench.files = make_files(bench.work, [*sizes, args.rss_mib, args.health_mib])

        say("data path: encrypt + MAC in memory, OpenSSL speed, library comparison")
        results["data_path"] = datapath.data_path(reference * MiB)
        results["openssl"] = datapath.openssl_cbc()
        results["libraries"] = datapath.library_comparison()
        say(
            f"data path {results['data_path']['single_thread_mb_s']:.0f} MB/s (1 thread), "
            f"OpenSSL CBC {results['openssl']['mb_s']:.0f} MB/s"
        )

        bench.start_emulator()
        say(f"stock mega.py, sizes {stock_sizes} MiB")
        throughput: dict[str, Any] = {"stock": bench.stock_series(stock_sizes)}

        # Right before the server's uploads, so that both see the same load on the machine.
        results["cpu_floor"] = datapath.cpu_floor(reference * MiB)
        results["loopback"] = datapath.loopback_cpu(reference * MiB)
        results["receive"] = bench.receive_cost(reference)
        bench.restart_server()
        say(f"server, sizes {sizes} MiB")
        throughput.update(bench.server_series(sizes))

        results["rss"] = {}
        for method in ("PUT", "POST"):
            rss, point = bench.peak_memory(method, args.rss_mib)
            results["rss"][method] = rss
            throughput[f"server_{method.lower()}"][str(args.rss_mib)] = point
        results["throughput"] = throughput

        results["health"] = bench.health_under_load(args.health_mib)
        results["slowed"] = bench.slowed_tail(reference, SLOWED_MB_S)
        stats = bench.emulator.stats() if bench.emulator else {}
        results["emulator_stats"] = {k: v for k, v in stats.items() if isinstance(v, int | float)}
        results["notes"] = notes(args, bench, stock_max)

    ref = str(reference)
    stock_ref = throughput["stock"].get(ref, {}).get("mb_s")
    ratios: dict[str, float | None] = {}
    for method in ("post", "put"):
        server_ref = throughput[f"server_{method}"].get(ref, {}).get("mb_s")
        ratios[f"server_{method}_vs_stock"] = (
            server_ref / stock_ref if server_ref and stock_ref else None
        )
    post_ref = throughput["server_post"].get(ref, {})
    put_ref = throughput["server_put"].get(ref, {})
    if post_ref.get("mb_s") and put_ref.get("mb_s"):
        ratios["server_post_vs_put"] = post_ref["mb_s"] / put_ref["mb_s"]
    floor = results["cpu_floor"]["cpu_s_per_gib"]
    for method, entry in (("post", post_ref), ("put", put_ref)):
        if entry.get("cpu_s_per_gib") is not None:
            ratios[f"server_{method}_cpu_vs_floor"] = entry["cpu_s_per_gib"] / floor
    ratios["data_path_vs_openssl_cbc"] = (
        results["data_path"]["single_thread_mb_s"] / results["openssl"]["mb_s"]
    )
    ratios["data_path_threaded_vs_openssl_cbc"] = (
        results["data_path"]["threaded_mb_s"] / results["openssl"]["mb_s"]
    )
    results["ratios"] = ratios
    results["reference_mib"] = reference
    results["duration_s"] = time.perf_counter() - started
    results["load_after"] = load_average()
    results["targets"] = report.target_lines(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"stock mega.py only up to {QUICK_STOCK_MAX_MIB} MiB"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks",
        help="directory for RESULTS.md, results.json, throughput.png",
    )
    parser.add_argument("--label", help="what code was measured, if not this git checkout")
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
    except (BenchmarkError, RuntimeError, OSError) as exc:
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
