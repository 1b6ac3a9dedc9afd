"""A SHA-256 whose state can be saved and taken up again in another process.

A resumable (tus) upload arrives in pieces that may land on any worker of any instance,
and the answer still carries the SHA-256 of the whole file, as every upload's does.
``hashlib`` cannot export a hash's state, and hashing the stored file again at the end
would mean reading it back from MEGA. OpenSSL's low-level ``SHA256_CTX`` is a plain
struct (``include/openssl/sha.h``: ``h[8]``, ``Nl``, ``Nh``, ``data[16]``, ``num``,
``md_len``, all 32-bit: 112 bytes) that ``SHA256_Init``/``SHA256_Update``/``SHA256_Final``
work on, so its bytes are the whole state: saved after each piece, restored for the next.
It is reached through the libcrypto that Python's own ``_hashlib`` is linked with (else
the system's), and checked against ``hashlib`` once, including a save and restore, before
it is used; the functions are deprecated in OpenSSL 3 but exported, and the struct has
kept this layout since OpenSSL 0.9.8. ctypes releases the GIL during each call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
from typing import Any

STATE_BYTES = 112  # sizeof(SHA256_CTX)
_DIGEST_BYTES = 32


class Sha256Unavailable(RuntimeError):
    """No usable OpenSSL SHA-256 in this process."""


class RunningSha256:
    """SHA-256 over bytes fed in order; ``state()`` can be stored and passed back in."""

    def __init__(self, state: bytes | None = None) -> None:
        self._lib = _libcrypto()
        if state is None:
            self._ctx = ctypes.create_string_buffer(STATE_BYTES)
            self._lib.SHA256_Init(self._ctx)
        else:
            if len(state) != STATE_BYTES:
                raise ValueError("not a saved SHA-256 state")
            self._ctx = ctypes.create_string_buffer(state, STATE_BYTES)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if isinstance(data, bytes):
            self._lib.SHA256_Update(self._ctx, data, len(data))
            return
        view = memoryview(data).cast("B")
        if view.readonly:
            self._lib.SHA256_Update(self._ctx, bytes(view), len(view))
            return
        buffer = (ctypes.c_char * len(view)).from_buffer(view)
        self._lib.SHA256_Update(self._ctx, buffer, len(view))

    def state(self) -> bytes:
        """The state after the bytes fed so far (112 bytes)."""
        return self._ctx.raw

    def hexdigest(self) -> str:
        """The digest of the bytes fed so far; the state is left as it is."""
        copy = ctypes.create_string_buffer(self._ctx.raw, STATE_BYTES)
        out = ctypes.create_string_buffer(_DIGEST_BYTES)
        self._lib.SHA256_Final(out, copy)
        return out.raw.hex()


def available() -> bool:
    """Whether this process can keep a SHA-256 across pieces (and so serve tus)."""
    try:
        _libcrypto()
    except Sha256Unavailable:
        return False
    return True


@functools.cache
def _libcrypto() -> Any:
    candidates: list[str] = []
    try:
        import _hashlib

        candidates.append(_hashlib.__file__)
    except (ImportError, AttributeError):
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        candidates.append(found)
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.SHA256_Init.argtypes = [ctypes.c_void_p]
            lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        except (OSError, AttributeError):
            continue
        if _works(lib):
            return lib
    raise Sha256Unavailable("no OpenSSL libcrypto with SHA256_Init in this process")


def _works(lib: Any) -> bool:
    """Split, saved, restored and finished: the same digest as hashlib's."""
    sample = bytes(range(256)) * 5 + b"tail"
    ctx = ctypes.create_string_buffer(STATE_BYTES)
    lib.SHA256_Init(ctx)
    lib.SHA256_Update(ctx, sample[:77], 77)
    restored = ctypes.create_string_buffer(ctx.raw, STATE_BYTES)
    lib.SHA256_Update(restored, sample[77:], len(sample) - 77)
    out = ctypes.create_string_buffer(_DIGEST_BYTES)
    lib.SHA256_Final(out, restored)
    return out.raw == hashlib.sha256(sample).digest()
