"""Command-line client: ``python -m app.cli upload FILE...``.

Each file is streamed from disk with ``PUT /files/{name}`` (memory stays flat whatever its
size) while its SHA-256 is computed; the service's answer is checked against it. A busy
service (503 or 429) is asked again after the ``Retry-After`` it gave, and a network
failure a bounded number of times. The link is printed last for each file, or one JSON
object per file with ``--json``. The token is never printed.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
from tqdm import tqdm

# Exit codes, for scripts. With several files, the code of the first failure.
EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, or no URL or token
EXIT_FILE = 3  # a file could not be read
EXIT_REFUSED = 4  # the service refused the upload (wrong token, too large, bad name...)
EXIT_UNAVAILABLE = 5  # the service failed, or was still busy after every attempt
EXIT_NETWORK = 6  # the service could not be reached after every attempt
EXIT_MISMATCH = 7  # the service's SHA-256 of the file differs from ours

DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK_BYTES = 256 * 1024
RETRY_STATUSES = {429, 503}
NETWORK_BACKOFF_S = 1.0
NETWORK_BACKOFF_MAX_S = 30.0

EPILOG = f"""\
environment:
  PAIMON_URL      the service's URL when --url is not given (default {DEFAULT_URL})
  PAIMON_TOKEN    the token or ticket when --token is not given

exit codes (with several files, the first failure's):
  {EXIT_OK}  every file uploaded
  {EXIT_USAGE}  bad arguments, or no token
  {EXIT_FILE}  a file could not be read
  {EXIT_REFUSED}  the service refused a file (wrong token or ticket, too large, bad name)
  {EXIT_UNAVAILABLE}  the service failed, or was still busy after every attempt
  {EXIT_NETWORK}  the service could not be reached after every attempt
  {EXIT_MISMATCH}  the service's SHA-256 of a file differs from the file's
"""


class UploadFailed(Exception):
    """One file did not upload; ``exit_code`` says how, ``details`` what the service said."""

    def __init__(self, exit_code: int, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details or {}


@dataclass
class Options:
    url: str
    token: str
    service: str | None
    attempts: int
    max_wait: float
    timeout: float
    progress: bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.cli",
        description="Upload files to a Paimon-server and print their links.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser(
        "upload",
        help="upload one or more files",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.add_argument("--url", help="the service's URL (default: $PAIMON_URL)")
    upload.add_argument(
        "--token", help="token or ticket (default: $PAIMON_TOKEN, which other users cannot see)"
    )
    upload.add_argument("--service", help="storage backend, e.g. mega (default: the service's)")
    upload.add_argument("--name", help="store the file under this name (one file only)")
    upload.add_argument("--json", action="store_true", help="print one JSON object per file")
    upload.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    upload.add_argument(
        "--attempts",
        type=int,
        default=5,
        help="attempts per file when busy or unreachable (default: 5)",
    )
    upload.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="longest wait for one Retry-After, in seconds (default: 300)",
    )
    upload.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the answer after the last byte (default: 600)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("PAIMON_TOKEN", "")
    if not token:
        parser.error("no token: give --token or set PAIMON_TOKEN")
    if args.name and len(args.files) > 1:
        parser.error("--name needs exactly one file")
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")
    options = Options(
        url=(args.url or os.environ.get("PAIMON_URL") or DEFAULT_URL).rstrip("/"),
        token=token,
        service=args.service,
        attempts=args.attempts,
        max_wait=args.max_wait,
        timeout=args.timeout,
        progress=not args.quiet,
    )
    status = EXIT_OK
    timeout = httpx.Timeout(30.0, read=options.timeout)
    with httpx.Client(timeout=timeout) as client:
        for path in args.files:
            name = args.name or path.name
            try:
                answer = upload_file(client, options, path, name)
            except UploadFailed as failure:
                status = status or failure.exit_code
                report_failure(path, failure, args.json)
            else:
                if args.json:
                    print(json.dumps({"file": str(path), **answer}), flush=True)
                else:
                    print(answer["link"], flush=True)
    return status


def upload_file(client: httpx.Client, options: Options, path: Path, name: str) -> dict[str, Any]:
    """Upload one file, retrying as the service asks; the service's answer on success."""
    try:
        source = path.open("rb")
    except OSError as error:
        raise UploadFailed(EXIT_FILE, f"cannot read the file: {error.strerror}") from None
    with source:
        size = os.fstat(source.fileno()).st_size
        url = f"{options.url}/files/{quote(name, safe='')}"
        params = {"service": options.service} if options.service else {}
        for attempt in range(1, options.attempts + 1):
            source.seek(0)
            digest = hashlib.sha256()
            with progress_bar(name, size, options.progress) as bar:
                try:
                    response = client.put(
                        url,
                        params=params,
                        content=_chunks(source, digest, bar),
                        headers={
                            "X-Auth-Token": options.token,
                            "Content-Length": str(size),
                            "Content-Type": "application/octet-stream",
                        },
                    )
                except httpx.TransportError as error:
                    wait = min(NETWORK_BACKOFF_S * 2 ** (attempt - 1), NETWORK_BACKOFF_MAX_S)
                    reason = f"network error ({type(error).__name__})"
                    if attempt == options.attempts:
                        raise UploadFailed(
                            EXIT_NETWORK, f"{reason} after {attempt} attempts"
                        ) from None
                    _say_retry(name, reason, wait, attempt, options.attempts)
                    time.sleep(wait)
                    continue
            if response.status_code == 200:
                return _checked(response, digest.hexdigest())
            body = _error_body(response)
            wait = retry_after(response)
            if response.status_code in RETRY_STATUSES and attempt < options.attempts:
                wait = min(wait if wait is not None else NETWORK_BACKOFF_S, options.max_wait)
                reason = f"{body['message']} ({response.status_code})"
                _say_retry(name, reason, wait, attempt, options.attempts)
                time.sleep(wait)
                continue
            code = EXIT_REFUSED if response.status_code < 500 else EXIT_UNAVAILABLE
            if response.status_code in RETRY_STATUSES:
                code = EXIT_UNAVAILABLE
            raise UploadFailed(code, body["message"], {"http_status": response.status_code, **body})
    raise AssertionError("the loop returns or raises")  # pragma: no cover


def _chunks(source: BinaryIO, digest: Any, bar: tqdm) -> Iterator[bytes]:
    """The file in pieces, hashed and counted as they are handed to the socket."""
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        bar.update(len(chunk))
        yield chunk


def progress_bar(name: str, size: int, enabled: bool) -> tqdm:
    return tqdm(
        total=size,
        desc=name if len(name) <= 30 else name[:27] + "...",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled,
        leave=True,
        dynamic_ncols=True,
        mininterval=0.2,
    )


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _checked(response: httpx.Response, sha256: str) -> dict[str, Any]:
    answer = response.json()
    if answer.get("sha256") != sha256:
        raise UploadFailed(
            EXIT_MISMATCH,
            "the service's SHA-256 of the file differs from the file's: upload it again",
            {"link": answer.get("link"), "expected_sha256": sha256, "sha256": answer.get("sha256")},
        )
    return answer


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return {"code": body.get("code", "http_error"), "message": body["message"]}
    return {"code": "http_error", "message": f"the service answered {response.status_code}"}


def _say_retry(name: str, reason: str, wait: float, attempt: int, attempts: int) -> None:
    print(
        f"paimon: {name}: {reason}; retrying in {wait:g} s (attempt {attempt + 1} of {attempts})",
        file=sys.stderr,
        flush=True,
    )


def report_failure(path: Path, failure: UploadFailed, as_json: bool) -> None:
    if as_json:
        body = {"message": str(failure), **failure.details}
        print(json.dumps({"file": str(path), "status": "error", **body}), flush=True)
    print(f"paimon: {path}: not uploaded: {failure}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
