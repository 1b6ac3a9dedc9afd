"""Run the emulator as a process: ``python -m tests.mega_emulator --port N ...``.

Prints the base URL on a single line once it accepts connections, then serves
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from .faults import FAULT_FIELDS
from .server import MegaEmulator

# Shorthand options for the most used faults; --fault NAME=JSON covers all.
SHORTHANDS: dict[str, tuple[str, Any]] = {
    "--hashcash-easiness": ("hashcash_easiness", int),
    "--eagain-probability": ("api_eagain_probability", float),
    "--ratelimit-probability": ("api_ratelimit_probability", float),
    "--tempunavail-probability": ("api_tempunavail_probability", float),
    "--api-delay": ("api_delay", float),
    "--chunk-delay": ("chunk_delay", float),
    "--chunk-500-probability": ("chunk_http500_probability", float),
    "--chunk-drop-probability": ("chunk_drop_probability", float),
    "--session-expire-after": ("session_expire_after_calls", int),
    "--storage-quota": ("storage_quota_bytes", int),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mega_emulator", description="Local MEGA API emulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--data-dir", help="where ciphertext is stored (default: a temp dir)")
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="EMAIL:PASSWORD[:v1][:totp=BASE32]",
        help="create an account (repeatable); ':v1' makes a v1 account, ':totp=SECRET' "
        "one with two-factor authentication",
    )
    parser.add_argument("--seed", type=int, help="seed for handles and fault rolls")
    parser.add_argument(
        "--avoid-dash", action="store_true", help="no '-' in node and public handles"
    )
    parser.add_argument(
        "--hashcash-all", action="store_true", help="challenge every API request, not only log-ins"
    )
    parser.add_argument("--over-quota", action="store_true", help="'u' answers -17")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help=f"any fault setting: {', '.join(FAULT_FIELDS)}",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    for flag, (name, kind) in SHORTHANDS.items():
        parser.add_argument(flag, type=kind, dest=name, default=None, help=f"fault {name}")
    return parser.parse_args(argv)


def fault_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name, _ in SHORTHANDS.values():
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.hashcash_all:
        settings["hashcash_all_requests"] = True
    if args.over_quota:
        settings["over_quota_upload_url"] = True
    for item in args.fault:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--fault expects NAME=JSON, got {item!r}")
        try:
            settings[name] = json.loads(raw)
        except ValueError:
            settings[name] = raw
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        emulator = MegaEmulator(
            args.data_dir,
            host=args.host,
            port=args.port,
            faults=fault_settings(args),
            seed=args.seed,
            avoid_dash_in_handles=args.avoid_dash,
            verbose=args.verbose,
        )
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"bad fault setting: {exc}") from exc
    for spec in args.account:
        email, sep, rest = spec.partition(":")
        rest, totp_mark, totp_secret = rest.partition(":totp=")
        password, version = rest, 2
        if rest.endswith(":v1"):
            password, version = rest[:-3], 1
        if not sep or not email:
            raise SystemExit(f"--account expects EMAIL:PASSWORD, got {spec!r}")
        emulator.add_account(
            email, password, version=version, totp_secret=totp_secret if totp_mark else None
        )

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    emulator.start()
    print(emulator.url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
