"""The MEGA data path's crypto against an independent, block-by-block reference."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from Crypto.Cipher import AES
from Crypto.Util import Counter
from mega.crypto import get_chunks

from app.storage.mega.crypto import (
    FileKey,
    MacAccumulator,
    chunk_bounds,
    encrypt_region,
    node_key,
    regions,
    split_node_key,
)
from tests.mega_verify import meta_mac_of

MiB = 1024 * 1024
SIZES = [0, 1, 15, 16, 17, 131071, 131072, 131073, MiB + 5, 3 * MiB + 16]
FIXED_KEY = FileKey(key=(0x01234567, 0x89ABCDEF, 0xFEDCBA98, 0x76543210), nonce=(0xDEADBEEF, 7))


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed + size).randbytes(size)


def xor16(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def reference_meta_mac(key: FileKey, data: bytes) -> tuple[int, int]:
    """MEGA's MAC the way its protocol describes it: one AES block at a time."""
    ecb = AES.new(struct.pack(">4I", *key.key), AES.MODE_ECB)
    nonce = struct.pack(">2I", *key.nonce)
    file_mac = bytes(16)
    offset, length = 0, 0x20000
    while offset < len(data):
        chunk = data[offset : offset + length]
        offset += len(chunk)
        length = min(length + 0x20000, 0x100000)
        mac = nonce + nonce
        for i in range(0, len(chunk), 16):
            block = chunk[i : i + 16].ljust(16, b"\0")
            mac = ecb.encrypt(xor16(mac, block))
        file_mac = ecb.encrypt(xor16(file_mac, mac))
    w = struct.unpack(">4I", file_mac)
    return (w[0] ^ w[1], w[2] ^ w[3])


def reference_ciphertext(key: FileKey, data: bytes) -> bytes:
    """CTR exactly as mega.py builds its counter."""
    k4, k5 = key.nonce
    counter = Counter.new(128, initial_value=((k4 << 32) + k5) << 64)
    return AES.new(struct.pack(">4I", *key.key), AES.MODE_CTR, counter=counter).encrypt(data)


def encrypt_and_mac(key: FileKey, data: bytes, limit: int) -> tuple[bytes, tuple[int, ...]]:
    macs = MacAccumulator(key)
    out = []
    for offset, length in regions(len(data), limit):
        plain = data[offset : offset + length]
        macs.add_region(offset, plain)
        out.append(encrypt_region(key, offset, plain))
    return b"".join(out), macs.meta_mac()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("limit", [1, 8 * MiB])
def test_mac_and_ciphertext_match_the_block_by_block_reference(size: int, limit: int) -> None:
    data = payload(size)
    ciphertext, mm = encrypt_and_mac(FIXED_KEY, data, limit)
    assert mm == reference_meta_mac(FIXED_KEY, data)
    assert ciphertext == reference_ciphertext(FIXED_KEY, data)


@pytest.mark.parametrize("size", SIZES)
def test_a_random_key_decrypts_and_verifies_through_the_link_key(size: int) -> None:
    data = payload(size, seed=2)
    key = FileKey.generate()
    ciphertext, mm = encrypt_and_mac(key, data, 2 * MiB)
    full = node_key(key, mm)
    again, meta = split_node_key(full)
    assert again == key and meta == mm
    # The verifier the end-to-end tests use, fed with what a link carries.
    aes_key = struct.pack(">4I", *(full[i] ^ full[i + 4] for i in range(4)))
    nonce = struct.pack(">2I", *full[4:6])
    plain = AES.new(aes_key, AES.MODE_CTR, counter=Counter.new(64, prefix=nonce,
                                                               initial_value=0)).decrypt(ciphertext)
    assert plain == data
    assert meta_mac_of(aes_key, nonce, plain) == tuple(full[6:8])


def test_node_key_layout() -> None:
    mm = (0x11111111, 0x22222222)
    k, n = FIXED_KEY.key, FIXED_KEY.nonce
    assert node_key(FIXED_KEY, mm) == (
        k[0] ^ n[0], k[1] ^ n[1], k[2] ^ mm[0], k[3] ^ mm[1], n[0], n[1], mm[0], mm[1]
    )


@pytest.mark.parametrize("size", [1, 15, 131072, 131073, 5 * MiB + 1, 20 * MiB])
def test_chunk_bounds_are_megas(size: int) -> None:
    assert list(chunk_bounds(size)) == list(get_chunks(size))


def test_an_empty_file_has_no_chunks_and_one_empty_region() -> None:
    assert list(chunk_bounds(0)) == []
    assert regions(0, 8 * MiB) == [(0, 0)]


@pytest.mark.parametrize("size", [1, 131073, 8 * MiB, 8 * MiB + 1, 50 * MiB + 3])
@pytest.mark.parametrize("limit", [1, 3 * MiB, 8 * MiB])
def test_regions_cover_the_file_on_chunk_boundaries(size: int, limit: int) -> None:
    found = regions(size, limit)
    starts = {offset for offset, _ in chunk_bounds(size)}
    assert found[0][0] == 0
    assert sum(length for _, length in found) == size
    for (offset, length), (following, _) in itertools.pairwise(found):
        assert offset + length == following
    for offset, length in found:
        assert offset in starts
        assert length <= max(limit, 1 * MiB)


def test_generated_keys_differ() -> None:
    keys = {FileKey.generate() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(k.key) == 4 and len(k.nonce) == 2 for k in keys)


def test_a_region_must_start_on_a_block_boundary() -> None:
    with pytest.raises(ValueError):
        encrypt_region(FIXED_KEY, 8, b"x")
