"""Command-line client: ``python -m app.cli upload FILE...``.

Each file is streamed from disk with ``PUT /files/{name}`` (memory stays flat whatever its
size) while its SHA-256 is computed; the service's answer is checked against it. A busy
service (503 or 429) is asked again after the ``Retry-After`` it gave, and a network
failure a bounded number of times. The link is printed last for each file, or one JSON
object per file with ``--json``. The token is never printed.

With ``--resume`` a file goes up with tus (the service's ``/tus/``) in pieces of
``RESUME_PIECE_BYTES``: the upload's URL is kept in a small state file
(``$XDG_STATE_HOME/paimon/uploads.json``), so a run that was killed, or lost its network,
goes on where the service stopped when it is run again with the same file.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin

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
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}
# One PATCH: big enough that a piece's overhead does not show, small enough that a broken
# connection costs little to send again.
RESUME_PIECE_BYTES = 8 * 1024 * 1024

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
    resume: bool = False


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
        "--resume",
        action="store_true",
        help="upload with tus in pieces; run again after an interruption to continue",
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
        resume=args.resume,
    )
    status = EXIT_OK
    timeout = httpx.Timeout(30.0, read=options.timeout)
    with httpx.Client(timeout=timeout) as client:
        for path in args.files:
            name = args.name or path.name
            send = upload_resumable if options.resume else upload_file
            try:
                answer = send(client, options, path, name)
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
        stat = os.fstat(source.fileno())
        url = f"{options.url}/files/{quote(name, safe='')}"
        params = {"service": options.service} if options.service else {}
        headers = {
            "X-Auth-Token": options.token,
            "Content-Length": str(stat.st_size),
            "Content-Type": "application/octet-stream",
            # The file's own date: MEGA's apps show it.
            "X-File-Mtime": str(int(stat.st_mtime)),
        }
        digest = hashlib.sha256()

        def send() -> httpx.Response:
            nonlocal digest
            source.seek(0)
            digest = hashlib.sha256()
            with progress_bar(name, stat.st_size, options.progress) as bar:
                content = _chunks(source, digest, bar)
                return client.put(url, params=params, content=content, headers=headers)

        response = _with_retries(name, options, send, RETRY_STATUSES)
        if response.status_code == 200:
            return _checked(response, digest.hexdigest())
        raise _refusal(response)


def _with_retries(
    name: str, options: Options, send: Callable[[], httpx.Response], retry: Collection[int]
) -> httpx.Response:
    """``send()`` again after a network failure or an answer in ``retry``, waiting as the
    service asks (Retry-After, at most ``--max-wait``) or backing off; the last answer
    after ``options.attempts`` tries (UploadFailed when the network never answered)."""
    for attempt in range(1, options.attempts + 1):
        try:
            response = send()
        except httpx.TransportError as error:
            reason = f"network error ({type(error).__name__})"
            if attempt == options.attempts:
                raise UploadFailed(EXIT_NETWORK, f"{reason} after {attempt} attempts") from None
            wait = min(NETWORK_BACKOFF_S * 2 ** (attempt - 1), NETWORK_BACKOFF_MAX_S)
        else:
            if response.status_code not in retry or attempt == options.attempts:
                return response
            asked = retry_after(response)
            wait = min(asked if asked is not None else NETWORK_BACKOFF_S, options.max_wait)
            reason = f"{_error_body(response)['message']} ({response.status_code})"
        _say_retry(name, reason, wait, attempt, options.attempts)
        time.sleep(wait)
    raise AssertionError("the loop returns or raises")  # pragma: no cover


def _refusal(response: httpx.Response) -> UploadFailed:
    """The failure for an answer that is not the one wanted, with the service's reason."""
    body = _error_body(response)
    code = EXIT_REFUSED if response.status_code < 500 else EXIT_UNAVAILABLE
    if response.status_code in RETRY_STATUSES:
        code = EXIT_UNAVAILABLE
    return UploadFailed(code, body["message"], {"http_status": response.status_code, **body})


def upload_resumable(
    client: httpx.Client, options: Options, path: Path, name: str
) -> dict[str, Any]:
    """Upload one file with tus, going on with the upload a previous run began."""
    try:
        source = path.open("rb")
    except OSError as error:
        raise UploadFailed(EXIT_FILE, f"cannot read the file: {error.strerror}") from None
    with source:
        stat = os.fstat(source.fileno())
        key = json.dumps([options.url, str(path.resolve()), stat.st_size, stat.st_mtime_ns, name])
        tus = _Resumable(client, options, name)
        url, offset = tus.find(_saved_uploads().get(key))
        if url is None:
            url, offset = tus.create(stat.st_size, name, int(stat.st_mtime)), 0
            _save_upload(key, url)
        elif offset:
            _say(name, f"resuming at {offset} of {stat.st_size} bytes")
        with progress_bar(name, stat.st_size, options.progress) as bar:
            bar.update(offset)
            while offset < stat.st_size:
                done = tus.patch(
                    url, source, offset, min(RESUME_PIECE_BYTES, stat.st_size - offset)
                )
                bar.update(done - offset)
                offset = done
        answer = tus.answer(url)
        _save_upload(key, None)
        source.seek(0)
        digest = hashlib.sha256()
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
    return _checked_answer(answer, digest.hexdigest())


class _Resumable:
    """The tus requests of one file, each tried as often as ``--attempts`` allows."""

    def __init__(self, client: httpx.Client, options: Options, name: str) -> None:
        self.client = client
        self.options = options
        self.name = name
        self.headers = {**TUS_HEADERS, "X-Auth-Token": options.token}

    def find(self, url: str | None) -> tuple[str | None, int]:
        """The saved upload and where it stands; (None, 0) when it is gone."""
        if url is None:
            return None, 0
        response = self._request("HEAD", url)
        if response.status_code in (404, 410):
            return None, 0  # ended, expired or finished long ago: start again
        self._expect(response, 200)
        return url, int(response.headers["upload-offset"])

    def create(self, size: int, name: str, mtime: int) -> str:
        given = {"filename": name, "mtime": str(mtime)}  # the file's date: MEGA's apps show it
        if self.options.service:
            given["service"] = self.options.service
        metadata = [
            f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in given.items()
        ]
        response = self._request(
            "POST",
            f"{self.options.url}/tus/",
            headers={"Upload-Length": str(size), "Upload-Metadata": ",".join(metadata)},
        )
        self._expect(response, 201)
        return urljoin(f"{self.options.url}/tus/", response.headers["location"])

    def patch(self, url: str, source: BinaryIO, offset: int, length: int) -> int:
        """Send ``length`` bytes from ``offset``; where the upload stands afterwards (the
        service may keep less than a piece: the rest goes again in the next one)."""
        headers = {
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length),
        }
        response = self._request(
            "PATCH", url, headers=headers, content=lambda: _piece(source, offset, length)
        )
        if response.status_code in (409, 423):
            # Not where we thought (a previous run's piece), or that piece still running.
            return self.find(url)[1]
        self._expect(response, 204)
        return int(response.headers["upload-offset"])

    def answer(self, url: str) -> dict[str, Any]:
        response = self._request("GET", url)
        self._expect(response, 200)
        return dict(response.json())

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, again after a network failure, a 503, 429 or 423 (bounded)."""
        extra = kwargs.pop("headers", {})
        content = kwargs.pop("content", None)

        def send() -> httpx.Response:
            headers = {**self.headers, **extra}
            body = content() if content else None
            return self.client.request(method, url, headers=headers, content=body, **kwargs)

        return _with_retries(self.name, self.options, send, (*RETRY_STATUSES, 423))

    def _expect(self, response: httpx.Response, status: int) -> None:
        if response.status_code != status:
            raise _refusal(response)


def _piece(source: BinaryIO, offset: int, length: int) -> Iterator[bytes]:
    source.seek(offset)
    while length > 0:
        block = source.read(min(CHUNK_BYTES, length))
        if not block:
            raise OSError("the file became shorter while it was uploaded")
        length -= len(block)
        yield block


def _state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "paimon" / "uploads.json"


def _saved_uploads() -> dict[str, str]:
    try:
        saved = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _save_upload(key: str, url: str | None) -> None:
    """Remember (or forget, with None) the upload URL of a file; only the URL, never the
    token. Written whole and renamed, so a run killed meanwhile leaves the last version."""
    saved = _saved_uploads()
    if url is None:
        saved.pop(key, None)
    else:
        saved[key] = url
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    fresh.write_text(json.dumps(saved, indent=1))
    os.replace(fresh, path)


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
    return _checked_answer(response.json(), sha256)


def _checked_answer(answer: dict[str, Any], sha256: str) -> dict[str, Any]:
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
    _say(name, f"{reason}; retrying in {wait:g} s (attempt {attempt + 1} of {attempts})")


def _say(name: str, what: str) -> None:
    print(f"paimon: {name}: {what}", file=sys.stderr, flush=True)


def report_failure(path: Path, failure: UploadFailed, as_json: bool) -> None:
    if as_json:
        body = {"message": str(failure), **failure.details}
        print(json.dumps({"file": str(path), "status": "error", **body}), flush=True)
    print(f"paimon: {path}: not uploaded: {failure}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
