"""MEGA's file encryption: AES-128-CTR for the data, chunk CBC-MACs for integrity.

Everything here is pure computation on bytes (no I/O), done by OpenSSL through
``cryptography``: one library call per region for the CTR stream and one per MEGA
chunk for its MAC, never a Python loop over 16-byte blocks.

``cryptography`` was measured against pycryptodome on the upload's shapes (8 MiB CTR,
1 MiB CBC): it is faster for both, and both release the GIL during a call, so regions
can be sealed in worker threads. Output goes through ``update_into`` into buffers that
are reused: allocating a fresh result per region (and faulting its pages in) cost more
than the CTR itself. ``seal_region`` MACs a region and then encrypts it *in place*, so
one buffer per region is all the upload path holds.

Key material follows MEGA's layout (the web client, the SDK and mega.py agree):

* file key ``k`` (4 x 32-bit) and nonce ``n`` (2 x 32-bit), from ``secrets``;
* CTR counter block = ``n`` (8 bytes) || block index (64-bit big-endian);
* chunk MAC = last block of AES-CBC(k, IV = n||n, chunk zero-padded to 16 bytes);
* file MAC = last block of AES-CBC(k, IV = 0, concatenated chunk MACs); a file
  without chunks (0 bytes) has the zero block as its file MAC;
* meta MAC ``mm`` = (mac[0]^mac[1], mac[2]^mac[3]);
* node key = [k0^n0, k1^n1, k2^mm0, k3^mm1, n0, n1, mm0, mm1].
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
FIRST_CHUNK = 0x20000  # 128 KiB; each following chunk grows by this much ...
MAX_CHUNK = 0x100000  # ... up to 1 MiB, then stays there
_ZERO_BLOCK = bytes(BLOCK)

A32 = tuple[int, ...]


def a32_bytes(values: Sequence[int]) -> bytes:
    """Big-endian 32-bit words to bytes (MEGA's ``a32_to_str``)."""
    return struct.pack(f">{len(values)}I", *values)


def bytes_a32(data: bytes) -> A32:
    """Bytes (a multiple of 4 long) to big-endian 32-bit words."""
    return struct.unpack(f">{len(data) // 4}I", data)


def chunk_bounds(size: int) -> Iterator[tuple[int, int]]:
    """MEGA's chunk boundaries as (offset, length); none for an empty file.

    Same sequence as ``mega.crypto.get_chunks`` for sizes above zero: 128 KiB,
    256 KiB, ... 1 MiB, then 1 MiB each, the last chunk being what remains.
    """
    offset, length = 0, FIRST_CHUNK
    while offset < size:
        step = min(length, size - offset)
        yield offset, step
        offset += step
        if length < MAX_CHUNK:
            length += FIRST_CHUNK


def regions(
    size: int, limit: int, first: int = 0, stop: int | None = None
) -> list[tuple[int, int]]:
    """Whole MEGA chunks grouped into (offset, length) regions of at most ``limit``
    bytes (a single chunk larger than ``limit`` is a region of its own).

    By default the whole file; with ``first`` (a chunk boundary) and ``stop``, only the
    chunks that lie wholly inside ``[first, stop)``, none when no whole chunk does. An
    empty file is one empty region: the upload server still needs one POST.
    """
    stop = size if stop is None else min(stop, size)
    result: list[tuple[int, int]] = []
    start = end = first
    for offset, length in chunk_bounds(size):
        if offset < first:
            continue
        if offset + length > stop:
            break
        if end == first and offset != first:
            raise ValueError("a piece must start on a MEGA chunk boundary")
        if end > start and offset + length - start > limit:
            result.append((start, end - start))
            start = offset
        end = offset + length
    if end > start or size == 0:
        result.append((start, end - start))
    return result


@dataclass(frozen=True, slots=True)
class FileKey:
    """The random key and nonce of one upload."""

    key: A32
    nonce: A32

    @classmethod
    def generate(cls) -> FileKey:
        words = bytes_a32(secrets.token_bytes(24))
        return cls(key=words[:4], nonce=words[4:])

    @property
    def key_bytes(self) -> bytes:
        return a32_bytes(self.key)

    @property
    def nonce_bytes(self) -> bytes:
        return a32_bytes(self.nonce)


def seal_region(file_key: FileKey, offset: int, buffer: bytearray, length: int) -> dict[int, bytes]:
    """MAC the MEGA chunks of the plaintext region at file ``offset`` held in
    ``buffer[:length]``, then CTR-encrypt it in place; returns the chunk MACs by offset.

    ``buffer`` must have at least ``length + BLOCK`` bytes: the bytes after ``length`` are
    zeroed so that the last chunk's MAC padding costs no copy.
    """
    if offset % BLOCK:
        raise ValueError("a region must start on a 16-byte boundary")
    if len(buffer) < length + BLOCK:
        raise ValueError("the region buffer needs BLOCK spare bytes")
    view = memoryview(buffer)
    view[length : length + BLOCK] = _ZERO_BLOCK
    aes = algorithms.AES(file_key.key_bytes)
    iv = file_key.nonce_bytes * 2
    scratch = _scratch()
    macs: dict[int, bytes] = {}
    for chunk_offset, chunk_length in _chunks_in(offset, length):
        start = chunk_offset - offset
        padded = chunk_length + (-chunk_length % BLOCK)
        encryptor = Cipher(aes, modes.CBC(iv)).encryptor()
        written = encryptor.update_into(view[start : start + padded], scratch)
        macs[chunk_offset] = bytes(scratch[written - BLOCK : written])
    if length:
        counter = file_key.nonce_bytes + struct.pack(">Q", offset // BLOCK)
        encryptor = Cipher(aes, modes.CTR(counter)).encryptor()
        # In place: OpenSSL's CTR allows input and output to be the same memory.
        encryptor.update_into(view[:length], buffer)
    return macs


def _chunks_in(offset: int, length: int) -> Iterator[tuple[int, int]]:
    """The MEGA chunks of a region that starts on a chunk boundary."""
    end = offset + length
    for chunk_offset, chunk_length in chunk_bounds(end):
        if chunk_offset >= offset:
            yield chunk_offset, chunk_length


_local = threading.local()


def _scratch() -> bytearray:
    """A per-thread output buffer for CBC-MACs: only the last block of the output is
    wanted, so one reused buffer per thread serves every chunk."""
    buffer: bytearray | None = getattr(_local, "scratch", None)
    if buffer is None:
        buffer = _local.scratch = bytearray(MAX_CHUNK + BLOCK)
    return buffer


def file_mac(file_key: FileKey, chunk_macs: Sequence[bytes]) -> A32:
    """CBC-MAC (zero IV) over the chunk MACs in file order, as four words."""
    if not chunk_macs:
        return bytes_a32(_ZERO_BLOCK)
    encryptor = Cipher(algorithms.AES(file_key.key_bytes), modes.CBC(_ZERO_BLOCK)).encryptor()
    return bytes_a32((encryptor.update(b"".join(chunk_macs)) + encryptor.finalize())[-BLOCK:])


def meta_mac(mac: Sequence[int]) -> A32:
    return (mac[0] ^ mac[1], mac[2] ^ mac[3])


def node_key(file_key: FileKey, mm: Sequence[int]) -> A32:
    """The 8-word key that goes (encrypted) into the node and (plain) into the link."""
    k, n = file_key.key, file_key.nonce
    return (k[0] ^ n[0], k[1] ^ n[1], k[2] ^ mm[0], k[3] ^ mm[1], n[0], n[1], mm[0], mm[1])


def split_node_key(key: Sequence[int]) -> tuple[FileKey, A32]:
    """The file key, nonce and meta MAC inside an 8-word node key."""
    if len(key) != 8:
        raise ValueError("a file node key has 8 words")
    aes = (key[0] ^ key[4], key[1] ^ key[5], key[2] ^ key[6], key[3] ^ key[7])
    return FileKey(key=aes, nonce=tuple(key[4:6])), tuple(key[6:8])


@dataclass(slots=True)
class MacAccumulator:
    """Chunk MACs of a file, filled region by region (regions may be redone)."""

    file_key: FileKey
    macs: dict[int, bytes] = field(default_factory=dict)

    def add_macs(self, macs: dict[int, bytes]) -> None:
        """Chunk MACs from ``seal_region``, in any order (a resent region replaces its own)."""
        self.macs.update(macs)

    def meta_mac(self) -> A32:
        return meta_mac(file_mac(self.file_key, [self.macs[o] for o in sorted(self.macs)]))


def attribute_block(attributes: dict[str, str], key: Sequence[int]) -> str:
    """A node's encrypted attributes: ``MEGA`` + compact JSON with raw UTF-8, zero-padded
    to whole AES blocks, AES-CBC with a zero IV, base64url.

    mega.py's ``encrypt_attr`` writes ``\\uXXXX`` escapes, and the SDK keeps only the low
    byte of one when it reads it (``JSON::unescape`` in ``src/json.cpp``): ``résumé``
    would show as ``r\\xe9sum\\xe9`` in MEGA's apps. The SDK itself writes raw UTF-8
    (``AttrMap::getjson`` in ``src/attrmap.cpp``), escaping only quotes, backslashes and
    control characters, which ``json.dumps(ensure_ascii=False)`` does too.
    """
    text = json.dumps(attributes, ensure_ascii=False, separators=(",", ":"))
    plain = b"MEGA" + text.encode("utf-8")
    plain += b"\0" * (-len(plain) % BLOCK)
    encryptor = Cipher(algorithms.AES(a32_bytes(key)), modes.CBC(_ZERO_BLOCK)).encryptor()
    return _b64url(encryptor.update(plain) + encryptor.finalize())


def read_attribute_block(block: str, key: Sequence[int]) -> dict[str, object] | None:
    """The attributes in a block, read as UTF-8; None when it does not decrypt to one."""
    try:
        data = base64.urlsafe_b64decode(block + "=" * (-len(block) % 4))
    except (ValueError, binascii.Error):
        return None
    if not data or len(data) % BLOCK:
        return None
    decryptor = Cipher(algorithms.AES(a32_bytes(key)), modes.CBC(_ZERO_BLOCK)).decryptor()
    plain = (decryptor.update(data) + decryptor.finalize()).rstrip(b"\0")
    if not plain.startswith(b'MEGA{"'):
        return None
    try:
        value = json.loads(plain[4:].decode("utf-8"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def fold_macs(file_key: FileKey, so_far: bytes, chunk_macs: Sequence[bytes]) -> bytes:
    """The file MAC so far (16 bytes) after the next ``chunk_macs``, in file order.

    The file MAC is a CBC-MAC over the chunk MACs, so it can be carried between requests
    as one block: the SDK keeps the same "macsmac so far" for uploads it resumes
    (``chunkmac_map::updateMacsmacProgress`` in ``src/utils.cpp``, folding with
    ``xorblock`` then ``ecb_encrypt``). Starting from the zero block and folding every
    chunk gives ``file_mac``.
    """
    if not chunk_macs:
        return so_far
    encryptor = Cipher(algorithms.AES(file_key.key_bytes), modes.CBC(so_far)).encryptor()
    return encryptor.update(b"".join(chunk_macs))[-BLOCK:]
