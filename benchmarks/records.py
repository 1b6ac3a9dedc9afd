"""Benchmark of the index of uploads: its build at start-up and the first page of
``GET /uploads``, on 10,000 and 100,000 records in the MEGA emulator.

The emulator runs in this process and is filled directly with file nodes that carry
records as a service would have written them (encrypted keys and attribute blocks,
public links); the service runs as a real process (``python -m uvicorn server:app``),
once with the index in memory and once in Redis when ``redis-server`` is installed.

Figures, not a test: nothing here fails on a slow machine. ``--update`` writes them into
the "Index of uploads" section of ``benchmarks/RESULTS.md`` (and nowhere else).

    python benchmarks/records.py                 # 10,000 and 100,000
    python benchmarks/records.py --sizes 10000   # one size
    python benchmarks/records.py --update        # and write RESULTS.md's section
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mega.crypto import a32_to_base64, encrypt_key  # noqa: E402

from app.access.tokens import token_sha256  # noqa: E402
from app.records.model import Record, Reference  # noqa: E402
from app.storage.mega.crypto import attribute_block, bytes_a32  # noqa: E402
from benchmarks.procs import Server, free_port, stop_process  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402
from tests.mega_emulator import MegaEmulator  # noqa: E402
from tests.mega_emulator.store import NODE_FILE, NODE_FOLDER, Node  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "benchmark password"
SECTION = "records-benchmark"
INDEX_TIMEOUT_S = 900.0
PAGE_REQUESTS = 20
TOKENS = [f"client-{n}" for n in range(20)]


def seed(emulator: MegaEmulator, folder_path: list[str], count: int) -> None:
    """Folders ``folder_path`` under the root, and ``count`` files with records in the last."""
    store = emulator.store
    account = store.accounts[EMAIL]
    master = bytes_a32(account.master_key)
    owner = account.user_handle
    parent = account.root
    for name in folder_path:
        key = bytes_a32(secrets.token_bytes(16))
        node = Node(store.new_node_handle(), parent, owner, NODE_FOLDER)
        node.attributes = attribute_block({"n": name}, key)
        node.key = f"{owner}:{a32_to_base64(encrypt_key(key, master))}"
        store.nodes[node.handle] = node
        parent = node.handle
    now = int(time.time())
    for index in range(count):
        words = bytes_a32(secrets.token_bytes(32))
        aes = tuple(words[i] ^ words[i + 4] for i in range(4))
        expires = now + 86400 * 30
        references = tuple(
            Reference(TOKENS[(index + j) % len(TOKENS)], now - index, None if j else expires,
                      secrets.token_urlsafe(12))
            for j in range(1 + index % 2)
        )  # fmt: skip
        record = Record("", f"file-{index}.bin", 1000 + index, now - index, None, "",
                        secrets.token_hex(32), references)  # fmt: skip
        node = Node(store.new_node_handle(), parent, owner, NODE_FILE, size=record.size)
        node.attributes = attribute_block({"n": record.name, **record.fields()}, aes)
        node.key = f"{owner}:{a32_to_base64(encrypt_key(words, master))}"
        node.created = record.created
        store.nodes[node.handle] = node
        public = store._unique(store.public, 6)
        store.public[public] = node.handle
        store.exported[node.handle] = public
        store.link_times[node.handle] = now


def measure(emulator: MegaEmulator, folder: str, count: int, redis_url: str | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="records-bench-"))
    manager = secrets.token_urlsafe(24)
    (work / "tokens.toml").write_text(
        f'[tokens.manager]\ntoken_sha256 = "{token_sha256(manager)}"\ncan_manage = true\n'
    )
    env = {
        "STORAGE_BACKEND": "mega",
        "MEGA_API_URL": emulator.url,
        "MEGA_EMAIL": EMAIL,
        "MEGA_PASSWORD": PASSWORD,
        "MEGA_FOLDER": folder,
        "MEGA_SESSION_FILE": str(work / "session.json"),
        "MEGA_READ_TIMEOUT": "600",
        "TEMP_UPLOAD_DIR": str(work / "spool"),
        "TOKENS_FILE": str(str(work / "tokens.toml")),
        "LOG_LEVEL": "info",
        "SWEEP_INTERVAL_SECONDS": "86400",
        "INDEX_REFRESH_SECONDS": "86400",
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    server = Server.start(ROOT, env, work / "server.log")
    try:
        headers = {"X-Auth-Token": manager}
        deadline = time.monotonic() + INDEX_TIMEOUT_S
        while httpx.get(f"{server.url}/uploads", headers=headers, timeout=60).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the index was not built in time:\n{server.log_tail()}")
            time.sleep(0.1)
        built = re.findall(
            r"index of uploads built: (\d+) files in ([\d.]+) s", server.log_tail(200)
        )
        files, build_s = int(built[-1][0]), float(built[-1][1])
        pages = []
        for _ in range(PAGE_REQUESTS):
            started = time.perf_counter()
            page = httpx.get(f"{server.url}/uploads", headers=headers, params={"limit": 100})
            pages.append(time.perf_counter() - started)
            assert page.status_code == 200 and len(page.json()["uploads"]) == 100
        return {
            "records": count,
            "index": "redis" if redis_url else "memory",
            "files_listed": files,
            "build_s": build_s,
            "first_page_ms_median": 1000 * statistics.median(pages),
            "first_page_ms_max": 1000 * max(pages),
            "server_rss_mib": _rss_mib(server.pid),
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def report(results: list[dict], took_s: float) -> str:
    lines = [
        "## Index of uploads (records)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Command: `python benchmarks/records.py --update` (took {took_s:.0f} s)",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"- 1-minute load average at the end: {os.getloadavg()[0]:.2f} (the machine is shared;"
        " compare the rows with each other rather than with other runs)",
        "- What: the service (one uvicorn process) starts against the MEGA emulator whose",
        "  upload folder holds N files with records; *build* is the index build as the service",
        "  logs it (one `f` listing of the whole account, decrypting every key and attribute",
        "  block, and writing the index), *first page* is `GET /uploads?limit=100` once built",
        f"  (median and worst of {PAGE_REQUESTS}, over loopback HTTP). Benchmark figures, not",
        "  tests; nothing fails when they are slow.",
        "",
        "| Records | Index | Build (s) | Build per 1,000 (s) | First page median (ms) "
        "| First page max (ms) | Server RSS after (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        lines.append(
            f"| {row['records']:,} | {row['index']} | {row['build_s']:.1f} | "
            f"{1000 * row['build_s'] / row['records']:.2f} | {row['first_page_ms_median']:.1f} | "
            f"{row['first_page_ms_max']:.1f} | {row['server_rss_mib']:.0f} |"
        )
    by = {(row["records"], row["index"]): row for row in results}
    lines.append("")
    for index in ("memory", "redis"):
        small, big = by.get((10_000, index)), by.get((100_000, index))
        if small and big:
            build = big["build_s"] / small["build_s"]
            page = big["first_page_ms_median"] / small["first_page_ms_median"]
            lines.append(
                f"- {index}: 10x the records took {build:.1f}x the build time; the first page "
                f"took {page:.1f}x as long (a page reads only its own rows)."
            )
    lines += [
        "- Memory: the `f` answer is parsed whole (as MEGA sends it, one JSON document), so a",
        "  process building its own index holds the account's node list while it builds; with",
        "  large accounts and several workers, set `REDIS_URL`: one build serves them all and",
        "  the workers hold no copy.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--update", action="store_true", help="write RESULTS.md's section")
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="records-bench-redis-"))
    redis, redis_url = start_redis(work)
    results = []
    try:
        for count in args.sizes:
            with MegaEmulator(seed=count) as emulator:
                emulator.faults.storage_quota_bytes = 10**15
                emulator.add_account(EMAIL, PASSWORD)
                folder = ["Bench", f"n{count}"]
                seed(emulator, folder, count)
                for url in [None, redis_url] if redis_url else [None]:
                    row = measure(emulator, "/".join(folder), count, url)
                    print(json.dumps(row), flush=True)
                    results.append(row)
    finally:
        if redis is not None:
            stop_process(redis)
        shutil.rmtree(work, ignore_errors=True)
    section = report(results, time.monotonic() - started)
    print(section)
    if args.update:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
