"""The emulated cloud: accounts, sessions, nodes, stored files and uploads.

All shared state lives here behind one re-entrant lock. File contents never
pass through this object: uploads write to their own part file on disk and
only report which byte ranges arrived.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accounts import Account, create_account
from .accounts.crypto import RsaKey, encrypt_session_id, new_session_secret
from .codec import b64url_encode, random_handle

NODE_FILE, NODE_FOLDER, NODE_ROOT, NODE_INBOX, NODE_RUBBISH = 0, 1, 2, 3, 4


@dataclass
class Node:
    handle: str
    parent: str
    owner: str  # user handle
    type: int
    attributes: str = ""  # encrypted, opaque to the server
    key: str = ""  # "<user handle>:<encrypted node key>" or ""
    size: int = 0
    blob: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    # The name as MEGA's C++ SDK (desktop and mobile apps, MEGAcmd) would show it.
    sdk_name: str | None = None

    def wire(self) -> dict[str, Any]:
        """The node as 'f' and 'p' answer it."""
        data: dict[str, Any] = {
            "h": self.handle,
            "p": self.parent,
            "u": self.owner,
            "t": self.type,
            "a": self.attributes,
            "k": self.key,
            "ts": self.created,
        }
        if self.type == NODE_FILE:
            data["s"] = self.size
        return data


@dataclass
class Blob:
    """Stored ciphertext of one uploaded file; nodes share it on import."""

    path: Path
    size: int
    refs: int = 0
    download_token: str = ""


@dataclass
class Session:
    sid: str
    email: str
    calls: int = 0
    expired: bool = False


@dataclass
class Upload:
    token: str
    owner: str
    size: int
    path: Path
    ranges: list[tuple[int, int]] = field(default_factory=list)  # merged [start, end)
    completion: str | None = None  # the upload token as 'p' takes it in "h"
    # The protocol version 'u' asked for ("v"): what the upload server's answers look like.
    version: int = 0
    # What the last piece is answered with once the file is complete.
    completion_answer: bytes = b""
    # Set once the upload server gave up on this upload (-3, -4, -6): every later piece
    # gets that code again, and only a fresh upload URL helps.
    dead_code: int | None = None

    def first_missing(self) -> int:
        """The first byte not received yet."""
        return self.ranges[0][1] if self.ranges and self.ranges[0][0] == 0 else 0

    def add_range(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.ranges, (start, end)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.ranges = merged

    def complete(self) -> bool:
        return self.size == 0 or self.ranges == [(0, self.size)]


class CloudStore:
    def __init__(self, data_dir: Path, seed: int | None = None, avoid_dash: bool = False) -> None:
        self.lock = threading.RLock()
        self.data_dir = data_dir
        (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        (data_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.avoid_dash = avoid_dash
        self.accounts: dict[str, Account] = {}
        self.sessions: dict[str, Session] = {}
        self.nodes: dict[str, Node] = {}
        self.blobs: dict[str, Blob] = {}
        self.downloads: dict[str, str] = {}  # download token -> blob id
        self.uploads: dict[str, Upload] = {}
        self.completions: dict[str, tuple[str, str, int]] = {}  # handle -> (owner, blob, size)
        self.public: dict[str, str] = {}  # public handle -> node handle
        self.exported: dict[str, str] = {}  # node handle -> public handle
        self.removed: dict[str, str] = {}  # handle of a removed node -> its owner
        self.link_times: dict[str, int] = {}  # node handle -> when its link was made
        self._sequence = 0

    # -- handles ---------------------------------------------------------
    def _unique(self, taken: Any, n_bytes: int, dash_ok: bool = True) -> str:
        while True:
            handle = random_handle(self.rng, n_bytes, avoid_dash=self.avoid_dash or not dash_ok)
            if handle not in taken:
                return handle

    def new_node_handle(self) -> str:
        return self._unique(self.nodes, 6)

    # -- accounts and sessions -------------------------------------------
    def add_account(
        self, email: str, password: str, version: int = 2, rsa_key: RsaKey | None = None
    ) -> Account:
        with self.lock:
            user_handle = self._unique({a.user_handle for a in self.accounts.values()}, 8)
        # Key derivation is slow (v1 especially); do it outside the lock.
        account = create_account(email, password, version, user_handle, rsa_key)
        with self.lock:
            if account.email in self.accounts:
                raise ValueError(f"account {account.email} exists")
            self.accounts[account.email] = account
            specials = (("root", NODE_ROOT), ("inbox", NODE_INBOX), ("rubbish", NODE_RUBBISH))
            for attr, kind in specials:
                node = Node(self.new_node_handle(), "", user_handle, kind)
                self.nodes[node.handle] = node
                setattr(account, attr, node.handle)
        return account

    def account_by_handle(self, user_handle: str) -> Account | None:
        with self.lock:
            return next((a for a in self.accounts.values() if a.user_handle == user_handle), None)

    def open_session(self, account: Account, leading_zero: bool = False) -> tuple[str, str]:
        """(sid the client will derive, csid to send); ``leading_zero``: a session id whose
        first byte is zero, as MEGA's are about once in 256."""
        secret = new_session_secret(account.user_handle, leading_zero)
        sid = b64url_encode(secret)
        with self.lock:
            self.sessions[sid] = Session(sid, account.email)
        return sid, encrypt_session_id(account.rsa, secret)

    # -- nodes -----------------------------------------------------------
    def owned_nodes(self, account: Account) -> list[Node]:
        with self.lock:
            return [n for n in self.nodes.values() if n.owner == account.user_handle]

    def used_bytes(self, account: Account) -> int:
        with self.lock:
            return sum(n.size for n in self.owned_nodes(account) if n.type == NODE_FILE)

    def location(self, handle: str) -> int | None:
        """The type of the special node (root, inbox, rubbish) ``handle`` lies under, or
        None when it is gone."""
        with self.lock:
            node = self.nodes.get(handle)
            while node is not None and node.parent:
                node = self.nodes.get(node.parent)
            return node.type if node is not None else None

    def subtree(self, handle: str) -> list[str]:
        """handle and all its descendants, children first."""
        with self.lock:
            children: dict[str, list[str]] = {}
            for node in self.nodes.values():
                children.setdefault(node.parent, []).append(node.handle)
            order: list[str] = []

            def walk(h: str) -> None:
                for child in children.get(h, []):
                    walk(child)
                order.append(h)

            walk(handle)
            return order

    def delete_node(self, handle: str) -> None:
        with self.lock:
            for h in self.subtree(handle):
                node = self.nodes.pop(h)
                self.removed[h] = node.owner
                self.unexport(h)
                if node.blob:
                    self.release_blob(node.blob)

    def unexport(self, handle: str) -> None:
        """Remove a node's public link: its public handle stops resolving at once."""
        with self.lock:
            ph = self.exported.pop(handle, None)
            self.link_times.pop(handle, None)
            if ph:
                self.public.pop(ph, None)

    def sequence_number(self) -> str:
        """The next ``sn``: 8 bytes, base64url (11 characters), growing with each call."""
        with self.lock:
            self._sequence += 1
            return b64url_encode(self._sequence.to_bytes(8, "big"))

    # -- blobs -----------------------------------------------------------
    def retain_blob(self, blob_id: str) -> None:
        with self.lock:
            self.blobs[blob_id].refs += 1

    def release_blob(self, blob_id: str) -> None:
        with self.lock:
            blob = self.blobs[blob_id]
            blob.refs -= 1
            if blob.refs <= 0:
                del self.blobs[blob_id]
                self.downloads.pop(blob.download_token, None)
                blob.path.unlink(missing_ok=True)

    def download_token(self, blob_id: str) -> str:
        with self.lock:
            blob = self.blobs[blob_id]
            if not blob.download_token:
                blob.download_token = b64url_encode(os.urandom(18))
                self.downloads[blob.download_token] = blob_id
            return blob.download_token

    # -- uploads ---------------------------------------------------------
    def new_upload(self, owner: str, size: int, version: int = 0) -> Upload:
        token = b64url_encode(os.urandom(24))
        path = self.data_dir / "uploads" / f"{token}.part"
        path.touch()  # chunk writers open it r+b, in any order
        upload = Upload(token, owner, size, path, version=version)
        with self.lock:
            self.uploads[token] = upload
        return upload

    def chunk_arrived(self, upload: Upload, start: int, end: int) -> tuple[bytes | None, bool]:
        """Record a written range. Returns (the answer that completes the upload or None,
        whether this call completed it); resends after completion get that answer again."""
        with self.lock:
            if upload.completion:
                return upload.completion_answer, False
            if end > start:
                upload.add_range(start, end)
            if not upload.complete():
                return None, False
            blob_id = b64url_encode(os.urandom(12))
            blob_path = self.data_dir / "blobs" / blob_id
            os.replace(upload.path, blob_path)
            self.blobs[blob_id] = Blob(blob_path, upload.size)
            if upload.version >= 2:
                # 36 bytes of binary: the web client tells it from the legacy text token by
                # its last byte, 1 (upload2.js, onXHRready), and sends it base64url-encoded
                # in 'p'; so does the SDK (UPLOADTOKENLEN, CommandPutNodes).
                token = os.urandom(35) + b"\x01"
                upload.completion, upload.completion_answer = b64url_encode(token), token
            else:  # the legacy form: 36 base64url characters, used in 'p' as they are
                upload.completion = b64url_encode(os.urandom(27))
                upload.completion_answer = upload.completion.encode()
            self.completions[upload.completion] = (upload.owner, blob_id, upload.size)
            return upload.completion_answer, True
