"""Where the server's CPU goes during one upload: py-spy on a real server process.

    python -m benchmarks.profile_server [--path gunicorn|uvicorn] [--method PUT|POST]
                                        [--mib 256] [--out DIR]

Starts the emulator and one server as ``run.py`` does (``gunicorn``: the deployed start
command with one worker, recorded in the worker; ``uvicorn``: one plain process), records
it with ``py-spy record`` (every thread, on-CPU samples only) while one upload runs, and
prints the functions with the most samples, self and inclusive. Writes
``profile-<path>-<method>.txt`` (py-spy's collapsed stacks) into ``--out`` (default: a
temp dir that is removed). py-spy comes from the benchmark's own environment
(benchmarks/requirements-reference.txt), installed on first use; ``run.py --profile``
records the same for both paths into RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import procs, reference_env  # noqa: E402

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@contextmanager
def recording(py_spy: Path, pid: int, collapsed: Path, rate: int = 250) -> Iterator[None]:
    """py-spy records ``pid`` (every thread, on-CPU samples) while the block runs."""
    recorder = subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
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
    try:
        time.sleep(1.0)  # py-spy attaches before the upload starts
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            recorder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            procs.stop_process(recorder)


def _stacks(collapsed: Path) -> Iterator[tuple[list[str], int]]:
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if frames and samples.isdigit():
            yield frames, int(samples)


def _place(frame: str) -> str:
    """``function (file)`` with the file shortened: from the package for installed
    code, from the repository for the project's, the bare name for the standard library."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif file.startswith(str(ROOT)):
        file = file[len(str(ROOT)) + 1 :]
    elif Path(file).is_absolute():
        file = Path(file).name
    # else: relative to the server's working directory, the repository
    return f"{match.group('function')} ({file})"


# Waiting primitives: their samples are told apart by who waits.
_WAITING = ("(threading.py)", "(queue.py)")


def _innermost(frames: list[str]) -> str:
    """The innermost frame; a lock, condition or queue wait named with its waiter
    (``Condition.wait (threading.py) in BodyRelay._next_block (app/relay.py)``)."""
    leaf = _place(frames[-1])
    if not leaf.endswith(_WAITING):
        return leaf
    for frame in reversed(frames[:-1]):
        caller = _place(frame)
        if not caller.endswith(_WAITING):
            return f"{leaf} in {caller}"
    return leaf


def top_frames(collapsed: Path, count: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(self, inclusive) sample counts per function from py-spy's collapsed format."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, n in _stacks(collapsed):
        own[_innermost(frames)] += n
        for frame in {_place(f) for f in frames}:
            inclusive[frame] += n
    return own.most_common(count), inclusive.most_common(count)


def by_file(collapsed: Path, top: int) -> dict[str, Any]:
    """On-CPU samples by innermost function (time in C code counts for the Python
    function that called it), the ``top`` largest as shares of all samples."""
    own, _ = top_frames(collapsed, top)
    total = sum(n for _, n in _stacks(collapsed))
    return {
        "samples": total,
        "top_self": [{"frame": frame, "share": n / total} for frame, n in own] if total else [],
    }


def main() -> int:
    from benchmarks import client, run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=run.PATHS, default="gunicorn")
    parser.add_argument("--method", choices=("PUT", "POST"), default="PUT")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    reference_env.ensure()
    bench_args = run.parse_args(["--quick"])
    with ExitStack() as stack:
        bench = run.Bench(bench_args, stack)
        bench.files = run.make_files(bench.work, [args.mib])
        bench.start_emulator()
        server = bench.restart_server(args.path)
        out_dir = args.out or bench.work
        out_dir.mkdir(parents=True, exist_ok=True)
        collapsed = out_dir / f"profile-{args.path}-{args.method.lower()}.txt"
        with recording(reference_env.py_spy(), server.pid, collapsed):
            timing = client.upload(
                server.url,
                server.token,
                args.method,
                bench.files[args.mib],
                f"profile-{args.mib}MiB.bin",
            )
        print(
            f"{args.path} {args.method} {args.mib} MiB: HTTP {timing.status}, "
            f"{timing.mb_per_s:.1f} MB/s"
        )
        own, inclusive = top_frames(collapsed, args.top)
        total = sum(n for _, n in _stacks(collapsed))
        print(f"\n{total} samples; self time:")
        for frame, n in own:
            print(f"{n / total * 100:6.1f}%  {frame}")
        print("\ninclusive:")
        for frame, n in inclusive:
            print(f"{n / total * 100:6.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
