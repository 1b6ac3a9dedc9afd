"""HTTP front end: the MEGA API (/cs), upload and download URLs, control API."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs

from . import errors, hashcash
from .accounts import Account
from .api import ApiContext, run_command, sdk_read_attributes, sdk_read_fingerprint
from .faults import Faults
from .http_body import PIECE, BodyReader
from .stats import Stats
from .store import CloudStore, Upload

MAX_API_BODY = 16 * 1024 * 1024
ANSWER_CACHE_SIZE = 100_000
_RANGE_HEADER = re.compile(r"bytes=(\d*)-(\d*)$")
_RANGE_SUFFIX = re.compile(r"^(\d+)-(\d*)$")


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    emulator: MegaEmulator


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    server_version = "MegaEmulator/1.0"
    # Headers and body go out in separate writes; without this, Nagle plus
    # delayed ACKs add ~40 ms to every small answer on a reused connection.
    disable_nagle_algorithm = True
    server: _HttpServer

    # -- plumbing ----------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    def parse_request(self) -> bool:
        self._reader: BodyReader | None = None  # one body reader per request
        return super().parse_request()

    def _body(self) -> BodyReader:
        if self._reader is None:
            length_header = self.headers.get("Content-Length")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            length = int(length_header) if length_header and not chunked else None
            self._reader = BodyReader(self.rfile, length, chunked)
        return self._reader

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        if not self._body().done:
            # Answering before reading the body: drain it so that the
            # connection stays usable for the next request.
            try:
                self._body().drain()
            except (ConnectionError, OSError, ValueError):
                self.close_connection = True
                return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode())

    def _split(self) -> tuple[str, dict[str, list[str]]]:
        path, _, query = self.path.partition("?")
        return path, parse_qs(query)

    # -- routing -----------------------------------------------------------
    def do_POST(self) -> None:
        path, query = self._split()
        emulator = self.server.emulator
        try:
            if path == "/cs":
                self._api(query)
            elif path.startswith("/ul/"):
                self._chunk(path)
            elif path == "/_emulator/faults":
                self._control_faults()
            elif path == "/_emulator/accounts":
                self._control_accounts()
            else:
                self._send(404)
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception:
            if emulator.verbose:
                raise
            self.close_connection = True
            self._send(500)

    def do_GET(self) -> None:
        path, query = self._split()
        emulator = self.server.emulator
        try:
            if path.startswith("/dl/"):
                self._download(path)
            elif path == "/_emulator/stats":
                self._send_json(emulator.stats())
            elif path == "/_emulator/faults":
                self._send_json(emulator.faults.snapshot())
            elif path == "/_emulator/nodes":
                email = query.get("email", [""])[0]
                self._send_json(emulator.nodes(email))
            elif path.startswith("/_emulator/ciphertext/"):
                handle = path.rsplit("/", 1)[1]
                try:
                    file_path = emulator.ciphertext_path(handle)
                except KeyError:
                    self._send(404)
                    return
                self._serve_file(file_path, file_path.stat().st_size, None)
            else:
                self._send(404)
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.close_connection = True

    def do_OPTIONS(self) -> None:
        self._send(
            200,
            headers={
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "*",
            },
        )

    # -- /cs ---------------------------------------------------------------
    def _api(self, query: dict[str, list[str]]) -> None:
        emulator = self.server.emulator
        faults, stats, store = emulator.faults, emulator._stats, emulator.store
        stats.add("api_requests")
        try:
            commands = json.loads(self._body().read_all(MAX_API_BODY))
        except (ValueError, UnicodeDecodeError):
            self._send_json(errors.EARGS)
            return
        if isinstance(commands, dict):
            commands = [commands]
        if not isinstance(commands, list):
            self._send_json(errors.EARGS)
            return

        delay = faults.api_delay
        if delay:
            time.sleep(delay)

        easiness = faults.hashcash_easiness
        challenged = easiness is not None and (
            faults.hashcash_all_requests
            or any(isinstance(c, dict) and c.get("a") == "us" for c in commands)
        )
        if challenged and not emulator._hashcash_passes(self.headers.get("X-Hashcash")):
            assert easiness is not None
            if faults.take("hashcash_hard_challenges_next"):
                easiness = 0
            token, header = hashcash.new_challenge(easiness)
            emulator._hashcash_issue(token, easiness)
            self._send(402, headers={"X-Hashcash": header})
            return

        if faults.take("api_http_error_next"):
            stats.fault("api_http_error")
            self._send(faults.api_http_error_status, content_type="text/plain")
            return

        for stem, code in (
            ("api_eagain", errors.EAGAIN),
            ("api_ratelimit", errors.ERATELIMIT),
            ("api_tempunavail", errors.ETEMPUNAVAIL),
        ):
            if faults.fires(stem):
                stats.fault(stem)
                self._send_json(code)
                return

        sid = query.get("sid", [None])[0]
        request_id = query.get("id", [None])[0]
        cache_key = (sid or "", request_id)
        if request_id is not None and faults.replay_repeated_ids:
            with emulator._answers_lock:
                cached = emulator._answers.get(cache_key)
            if cached is not None:
                # A request id seen before: the answer it got, not the commands carried out
                # again (the SDK keeps one id for resends of the same request only).
                stats.add("replayed_answers")
                self._send(200, cached)
                return

        account: Account | None = None
        if sid:
            limit = faults.session_expire_after_calls
            with store.lock:
                session = store.sessions.get(sid)
                if session is not None and not session.expired:
                    session.calls += 1
                    if limit is not None and session.calls > limit:
                        session.expired = True
                        stats.add("sessions_expired")
                        stats.fault("session_expired")
                if session is None or session.expired:
                    if faults.error_objects:  # the same error as a per-command object
                        self._send_json([{"err": errors.ESID} for _ in commands])
                    else:
                        self._send_json(errors.ESID)
                    return
                account = store.accounts[session.email]
            names = {c.get("a") for c in commands if isinstance(c, dict)}
            if account.email in faults.blocked_emails and names != {"whyamiblocked"}:
                # The SDK meets a blocked account as a request-level -16 while logged in
                # (MegaClient::exec: "if (e == API_EBLOCKED && sid.size()) block()").
                stats.add("blocked_requests")
                self._send_json(errors.EBLOCKED)
                return

        ctx = ApiContext(store, faults, stats, account, emulator.url, emulator.plain_url)
        body = json.dumps([run_command(ctx, c) for c in commands], separators=(",", ":")).encode()
        if request_id is not None:
            emulator._remember_answer(cache_key, body)
        lost_for = faults.api_answer_lost_command
        names = {c.get("a") for c in commands if isinstance(c, dict)}
        if (lost_for is None or lost_for in names) and faults.take("api_answer_lost_next"):
            stats.fault("api_answer_lost")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(200, body)

    # -- uploads -----------------------------------------------------------
    def _chunk(self, path: str) -> None:
        stats = self.server.emulator._stats
        stats.add("chunk_posts")
        stats.chunk_post_started()
        try:
            self._chunk_post(path)
        finally:
            stats.chunk_post_ended()

    def _chunk_post(self, path: str) -> None:
        emulator = self.server.emulator
        faults, stats, store = emulator.faults, emulator._stats, emulator.store
        parts = path.split("/")
        delay = faults.chunk_delay
        if delay:
            time.sleep(delay)
        upload: Upload | None = store.uploads.get(parts[2]) if len(parts) == 4 else None
        if upload is None:
            self._send(403)  # what an expired or unknown upload URL gets
            return
        if upload.completion is not None and faults.completed_upload_status is not None:
            stats.add("chunk_posts_to_completed_uploads")
            self._send(faults.completed_upload_status, content_type="text/plain")
            return
        if upload.dead_code is not None:
            stats.add("chunk_posts_to_dead_uploads")
            self._send(200, str(upload.dead_code).encode(), "text/plain")
            return
        try:
            offset = int(parts[3])
        except ValueError:
            offset = -1
        if offset == faults.chunk_delay_offset and faults.chunk_offset_delay:
            time.sleep(faults.chunk_offset_delay)
        for stem, status in (
            ("chunk_http403", 403),
            ("chunk_http404", 404),
            ("chunk_http509", 509),
            ("chunk_http429", 429),
            ("chunk_http503", 503),
            ("chunk_http500", 500),
        ):
            if faults.fires(stem):
                stats.fault(stem)
                self._send(status, content_type="text/plain")
                return
        body = self._body()
        if faults.fires("chunk_drop"):
            stats.fault("chunk_drop")
            # Take part of the body, then vanish without an answer.
            for _ in body.pieces(limit=(body.length or 0) // 2):
                pass
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if faults.take("chunk_error_next"):
            stats.fault("chunk_error")
            code = faults.chunk_error_code
            # src/transferslot.cpp: after -3, -4 or -6 the upload "cannot be continued on
            # that server"; -14 (integrity check) only asks for that piece again.
            if code in (errors.EAGAIN, errors.ERATELIMIT, errors.ETOOMANY):
                upload.dead_code = code
            self._send(200, str(code).encode(), "text/plain")
            return
        end = offset + (body.length or 0)
        if offset >= 0 and end - upload.first_missing() > faults.upload_window_bytes:
            # Past the window the server gives up on the upload (-4): the SDK never sends
            # a piece more than 256 MiB past the earliest unconfirmed one
            # (TransferSlot::MAX_GAP_SIZE, src/transferslot.cpp).
            stats.add("window_refusals")
            upload.dead_code = errors.ERATELIMIT
            self._send(200, str(errors.ERATELIMIT).encode(), "text/plain")
            return
        if offset < 0 or (body.length is not None and offset + body.length > upload.size):
            self._send(200, str(errors.EARGS).encode(), "text/plain")
            return
        written = 0
        if upload.completion is None:
            try:
                with open(upload.path, "r+b", buffering=0) as out:
                    out.seek(offset)
                    for piece in body.pieces():
                        if offset + written + len(piece) > upload.size:
                            raise ValueError("chunk runs past the announced size")
                        out.write(piece)
                        written += len(piece)
            except FileNotFoundError:
                pass  # completed by a concurrent resend; the part file became a blob
            except ValueError:
                self._send(200, str(errors.EARGS).encode(), "text/plain")
                return
        stats.add("chunk_bytes", written)
        completed, first_time = store.chunk_arrived(upload, offset, offset + written)
        if first_time:
            stats.add("uploads_completed")
        lost_at = faults.chunk_answer_lost_offset
        if (lost_at is None or lost_at == offset) and faults.take("chunk_answer_lost_next"):
            stats.fault("chunk_answer_lost")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if completed is not None:
            self._send(200, completed, "application/octet-stream")
        elif upload.version >= 3:
            # The SDK's protocol acknowledges a piece with "0" (src/transferslot.cpp: any
            # answer but a token or "0" is an error); the others with an empty body.
            self._send(200, b"0", "text/plain")
        else:
            self._send(200, b"", "text/plain")

    # -- downloads ---------------------------------------------------------
    def _download(self, path: str) -> None:
        emulator = self.server.emulator
        parts = path.split("/")
        with emulator.store.lock:
            blob_id = emulator.store.downloads.get(parts[2]) if len(parts) >= 3 else None
            blob = emulator.store.blobs.get(blob_id) if blob_id else None
        if blob is None:
            self._send(404)
            return
        if emulator.faults.take("download_http509_next"):
            emulator._stats.fault("download_http509")
            self._send(509)
            return
        span: tuple[int, int] | None = None
        suffix = _RANGE_SUFFIX.match(parts[3]) if len(parts) >= 4 else None
        header = _RANGE_HEADER.match(self.headers.get("Range", "").strip())
        match = suffix or header
        if match:
            first, last = match.group(1), match.group(2)
            if first == "":  # bytes=-N: the last N bytes
                start, end = max(0, blob.size - int(last or 0)), blob.size - 1
            else:
                start, end = int(first), int(last) if last else blob.size - 1
            end = min(end, blob.size - 1)
            if start > end and blob.size:
                self._send(416, headers={"Content-Range": f"bytes */{blob.size}"})
                return
            span = (start, end)
        emulator._stats.add("downloads")
        self._serve_file(blob.path, blob.size, span, partial_status=bool(header))

    def _serve_file(
        self, file_path: Path, size: int, span: tuple[int, int] | None, partial_status: bool = True
    ) -> None:
        start, end = span if span else (0, size - 1)
        length = max(0, end - start + 1)
        status = 206 if span and partial_status else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        with open(file_path, "rb") as source:
            source.seek(start)
            while sent < length:
                piece = source.read(min(PIECE, length - sent))
                if not piece:
                    break
                self.wfile.write(piece)
                sent += len(piece)
        self.server.emulator._stats.add("download_bytes", sent)

    # -- control API ---------------------------------------------------------
    def _control_json(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self._body().read_all(MAX_API_BODY) or b"{}")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self._send_json({"error": "expected a JSON object"}, 400)
            return None
        return value

    def _control_faults(self) -> None:
        settings = self._control_json()
        if settings is None:
            return
        faults = self.server.emulator.faults
        try:
            if settings.pop("reset", False):
                faults.reset()
            if "seed" in settings:
                faults.seed(settings.pop("seed"))
            faults.update(**settings)
        except (TypeError, ValueError) as exc:
            self._send_json({"error": str(exc)}, 400)
            return
        self._send_json(faults.snapshot())

    def _control_accounts(self) -> None:
        spec = self._control_json()
        if spec is None:
            return
        try:
            account = self.server.emulator.add_account(
                str(spec["email"]),
                str(spec["password"]),
                version=int(spec.get("version", 2)),
                blocked=bool(spec.get("blocked", False)),
                totp_secret=spec.get("totp_secret"),
            )
        except (KeyError, ValueError) as exc:
            self._send_json({"error": str(exc)}, 400)
            return
        self._send_json(
            {"email": account.email, "u": account.user_handle, "version": account.version}
        )


class MegaEmulator:
    """A local MEGA service. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | dict[str, Any] | None = None,
        seed: int | None = None,
        avoid_dash_in_handles: bool = False,
        verbose: bool = False,
        tls: bool = False,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="mega-emulator-") if data_dir is None else data_dir
        )
        self.host = host
        self.port = port
        self.verbose = verbose
        self.tls = tls
        # Over TLS: a self-signed certificate for 127.0.0.1, for clients to trust.
        self.ca_file: Path | None = None
        if isinstance(faults, Faults):
            self.faults = faults
        else:
            self.faults = Faults(seed=seed, **(faults or {}))
        self._seed = seed
        self._avoid_dash = avoid_dash_in_handles
        self._generation = 0
        self.store = CloudStore(self.data_dir, seed=seed, avoid_dash=avoid_dash_in_handles)
        self._stats = Stats()
        self._challenges: dict[str, int] = {}  # outstanding hashcash token -> easiness
        # Complete answers by (sid, request id), the oldest dropped first.
        self._answers: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._answers_lock = threading.Lock()
        self._challenge_lock = threading.Lock()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        advertised = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"{'https' if self.tls else 'http'}://{advertised}:{self.port}"

    @property
    def plain_url(self) -> str:
        """The http:// form of the address (over TLS nothing answers plain HTTP there)."""
        return self.url.replace("https://", "http://", 1)

    def start(self) -> Self:
        server = _HttpServer((self.host, self.port), RequestHandler)
        if self.tls:
            self.ca_file = _self_signed(self.data_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, self.ca_file)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        server.emulator = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="mega-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- accounts --------------------------------------------------------------
    def add_account(
        self,
        email: str,
        password: str,
        version: int = 2,
        blocked: bool = False,
        totp_secret: str | None = None,
    ) -> Account:
        """``totp_secret`` (base32) makes it a two-factor account."""
        account = self.store.add_account(email, password, version)
        account.totp_secret = totp_secret
        if blocked:
            self.faults.blocked_emails = [*self.faults.blocked_emails, account.email]
        return account

    def expire_sessions(self, email: str | None = None) -> int:
        """Invalidate the sessions of one account (or all); returns how many."""
        with self.store.lock:
            hit = [
                s
                for s in self.store.sessions.values()
                if not s.expired and (email is None or s.email == email.lower())
            ]
            for session in hit:
                session.expired = True
        return len(hit)

    # -- inspection --------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        snapshot = self._stats.snapshot()
        with self.store.lock:
            snapshot["accounts"] = len(self.store.accounts)
            snapshot["sessions"] = sum(not s.expired for s in self.store.sessions.values())
            snapshot["stored_files"] = sum(1 for n in self.store.nodes.values() if n.type == 0)
            snapshot["stored_bytes"] = sum(b.size for b in self.store.blobs.values())
        return snapshot

    def reset_stats(self) -> None:
        self._stats.reset()

    def reset(self) -> None:
        """Forget everything, as a fresh emulator with the same seed would: accounts,
        sessions, nodes, stored files, uploads, faults, counters and open challenges. The
        address stays, so a test can reuse a running emulator instead of starting one."""
        self._generation += 1
        fresh = self.data_dir / f"cloud-{self._generation}"
        store = CloudStore(fresh, seed=self._seed, avoid_dash=self._avoid_dash)
        old, self.store = self.store, store
        if old.data_dir != self.data_dir:
            shutil.rmtree(old.data_dir, ignore_errors=True)
        else:
            for part in ("uploads", "blobs"):
                shutil.rmtree(old.data_dir / part, ignore_errors=True)
        self.faults.reset()
        self.faults.seed(self._seed)
        self._stats.reset()
        with self._challenge_lock:
            self._challenges.clear()
        with self._answers_lock:
            self._answers.clear()

    def nodes(self, email: str) -> list[dict[str, Any]]:
        """The account's nodes as 'f' returns them (attributes still encrypted)."""
        account = self.store.accounts.get(email.lower())
        if account is None:
            return []
        return [n.wire() for n in self.store.owned_nodes(account)]

    def sdk_names(self, email: str) -> list[str | None]:
        """The names of the account's files and folders as MEGA's SDK-based apps show them."""
        account = self.store.accounts.get(email.lower())
        with self.store.lock:
            return [
                n.sdk_name
                for n in self.store.nodes.values()
                if account is not None and n.owner == account.user_handle and n.type in (0, 1)
            ]

    def sdk_fingerprint(self, handle: str) -> tuple[bytes, int] | None:
        """(CRC bytes, mtime) of a file's fingerprint as MEGA's apps read it, or None."""
        with self.store.lock:
            node = self.store.nodes[handle]
            account = self.store.account_by_handle(node.owner)
            assert account is not None
            encrypted_key = node.key.partition(":")[2]
            return sdk_read_fingerprint(node.attributes, encrypted_key, account.master_key)

    def sdk_attributes(self, handle: str) -> dict[str, bytes] | None:
        """A node's attributes as MEGA's C++ SDK reads them (``api.sdk_read_attributes``):
        names as the SDK keeps them, values as bytes; None when they do not decrypt."""
        with self.store.lock:
            node = self.store.nodes[handle]
            account = self.store.account_by_handle(node.owner)
            assert account is not None
            return sdk_read_attributes(
                node.attributes, node.key.partition(":")[2], account.master_key
            )

    def node(self, handle: str) -> dict[str, Any]:
        with self.store.lock:
            return self.store.nodes[handle].wire()

    def location(self, handle: str) -> str | None:
        """Where node ``handle`` lies: "root" (the cloud drive), "inbox", "rubbish", or
        None when it is gone."""
        kind = self.store.location(handle)
        return {2: "root", 3: "inbox", 4: "rubbish"}.get(kind) if kind is not None else None

    def public_handle(self, handle: str) -> str | None:
        with self.store.lock:
            return self.store.exported.get(handle)

    def ciphertext_path(self, handle: str) -> Path:
        """Where the stored ciphertext of file node ``handle`` lives (KeyError if none)."""
        with self.store.lock:
            node = self.store.nodes[handle]
            if node.blob is None:
                raise KeyError(handle)
            return self.store.blobs[node.blob].path

    def read_ciphertext(self, handle: str) -> bytes:
        return self.ciphertext_path(handle).read_bytes()

    def _remember_answer(self, key: tuple[str, str], body: bytes) -> None:
        with self._answers_lock:
            self._answers[key] = body
            while len(self._answers) > ANSWER_CACHE_SIZE:
                self._answers.popitem(last=False)

    # -- hashcash bookkeeping ------------------------------------------------------
    def _hashcash_issue(self, token: str, easiness: int) -> None:
        with self._challenge_lock:
            self._challenges[token] = easiness
        self._stats.add("hashcash_issued")

    def _hashcash_passes(self, header: str | None) -> bool:
        answer = hashcash.parse_answer(header)
        if answer is None:
            return False
        token, prefix = answer
        if not prefix:
            # src/posix/net.cpp: a solver out of time sends "1:<token>:"; MEGA answers
            # with a fresh challenge.
            self._stats.add("hashcash_empty_answers")
        with self._challenge_lock:
            # A token answers exactly one challenge.
            easiness = self._challenges.pop(token, None)
        if easiness is not None and hashcash.verify(token, prefix, easiness):
            self._stats.add("hashcash_passed")
            return True
        self._stats.add("hashcash_failed")
        return False


def _self_signed(directory: Path) -> Path:
    """A key and self-signed certificate for 127.0.0.1 in one PEM file."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "tls.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path
