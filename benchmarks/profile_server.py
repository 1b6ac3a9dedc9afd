"""Where the server's CPU goes during one upload: py-spy on a real server process.

    python benchmarks/profile_server.py [--method PUT|POST] [--mib 256] [--out DIR]

Starts the emulator and one uvicorn process as ``run.py`` does, records the server with
``py-spy record`` (every thread, on-CPU samples only) while one upload runs, and prints
the functions with the most samples, self and inclusive. Writes ``profile-<method>.txt``
(py-spy's collapsed stacks) into ``--out`` (default: a temp dir that is removed).
Install py-spy with ``python -m pip install --constraint constraints.txt py-spy``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import client, run  # noqa: E402


def top_frames(collapsed: Path, count: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(self, inclusive) sample counts per function from py-spy's collapsed format."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        n = int(samples)
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own.most_common(count), inclusive.most_common(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("PUT", "POST"), default="PUT")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: python -m pip install --constraint constraints.txt py-spy")
        return 1
    bench_args = run.parse_args(["--quick"])
    with ExitStack() as stack:
        bench = run.Bench(bench_args, stack)
        bench.files = run.make_files(bench.work, [args.mib])
        bench.start_emulator()
        server = bench.restart_server()
        out_dir = args.out or bench.work
        out_dir.mkdir(parents=True, exist_ok=True)
        collapsed = out_dir / f"profile-{args.method.lower()}.txt"
        recorder = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(server.pid),
                "--rate",
                "250",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(collapsed),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(run.procs.stop_process, recorder)
        time.sleep(1.0)  # py-spy attaches before the upload starts
        timing = client.upload(
            server.url,
            server.token,
            args.method,
            bench.files[args.mib],
            f"profile-{args.mib}MiB.bin",
        )
        recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
        recorder.wait(timeout=60)
        print(f"{args.method} {args.mib} MiB: HTTP {timing.status}, {timing.mb_per_s:.1f} MB/s")
        own, inclusive = top_frames(collapsed, args.top)
        total = sum(
            int(line.rpartition(" ")[2])
            for line in collapsed.read_text().splitlines()
            if line.strip()
        )
        print(f"\n{total} samples; self time:")
        for frame, n in own:
            print(f"{n / total * 100:6.1f}%  {frame}")
        print("\ninclusive:")
        for frame, n in inclusive:
            print(f"{n / total * 100:6.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
