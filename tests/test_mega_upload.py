"""The MEGA data path's crypto against an independent, block-by-block reference."""

from __future__ import annotations

import base64
import itertools
import json
import random
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES
from Crypto.Util import Counter
from mega.crypto import get_chunks

from app.config import MegaSettings
from app.storage.base import (
    Readiness,
    StorageFull,
    StorageLoginFailed,
    StorageTimeout,
    StoreExtras,
    UpstreamRejected,
)
from app.storage.mega import MegaBackend
from app.storage.mega.client import MegaClient
from app.storage.mega.crypto import (
    FileKey,
    MacAccumulator,
    chunk_bounds,
    node_key,
    regions,
    seal_region,
    split_node_key,
)
from app.storage.mega.errors import (
    Action,
    MegaBadUploadAnswer,
    MegaChunkError,
    MegaError,
    action_for,
    to_storage_error,
)
from app.storage.mega.fingerprint import Fingerprint, fingerprint_attribute, window_offsets
from app.storage.mega.retry import RetryPolicy
from app.storage.mega.session import MemorySessionStore
from app.storage.mega.upload import (
    UploadLimits,
    export_link,
    put_file_node,
    send_file,
    upload_answer,
)
from tests.conftest import EmulatorOptions
from tests.mega_emulator import MegaEmulator
from tests.mega_verify import fingerprint_of, meta_mac_of, verify
from tests.support.mega_service import QUICK_WAITS

MiB = 1024 * 1024
SIZES = [0, 1, 15, 16, 17, 131071, 131072, 131073, MiB + 5, 2 * MiB + 16]
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
    """The upload path's crypto: each region sealed in place in its own buffer."""
    macs = MacAccumulator(key)
    out = bytearray()
    for offset, length in regions(len(data), limit):
        buffer = bytearray(length + 16)
        buffer[:length] = data[offset : offset + length]
        macs.add_macs(seal_region(key, offset, buffer, length))
        out += buffer[:length]
    return bytes(out), macs.meta_mac()


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
    plain = AES.new(
        aes_key, AES.MODE_CTR, counter=Counter.new(64, prefix=nonce, initial_value=0)
    ).decrypt(ciphertext)
    assert plain == data
    assert meta_mac_of(aes_key, nonce, plain) == tuple(full[6:8])


@pytest.mark.parametrize("size", SIZES)
def test_sealing_in_place_matches_the_reference(size: int) -> None:
    data = payload(size, seed=3)
    macs = MacAccumulator(FIXED_KEY)
    out = bytearray()
    for offset, length in regions(size, MiB):
        buffer = bytearray(b"\xff" * (length + 40))  # stale bytes after the region
        buffer[:length] = data[offset : offset + length]
        macs.add_macs(seal_region(FIXED_KEY, offset, buffer, length))
        out += buffer[:length]
    assert bytes(out) == reference_ciphertext(FIXED_KEY, data)
    assert macs.meta_mac() == reference_meta_mac(FIXED_KEY, data)


def test_a_region_buffer_needs_room_for_the_padding() -> None:
    with pytest.raises(ValueError):
        seal_region(FIXED_KEY, 0, bytearray(20), 10)


def test_node_key_layout() -> None:
    mm = (0x11111111, 0x22222222)
    k, n = FIXED_KEY.key, FIXED_KEY.nonce
    assert node_key(FIXED_KEY, mm) == (
        k[0] ^ n[0],
        k[1] ^ n[1],
        k[2] ^ mm[0],
        k[3] ^ mm[1],
        n[0],
        n[1],
        mm[0],
        mm[1],
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
        seal_region(FIXED_KEY, 8, bytearray(32), 1)


def test_the_upload_servers_answers_are_read_as_bytes() -> None:
    binary = bytes(range(200, 235)) + b"\x01"  # a v2/v3 token ends in byte 1
    text = b"A" * 35 + b"_"  # the legacy token: 36 base64url characters
    assert upload_answer(b"") is None and upload_answer(b"0") is None
    assert upload_answer(binary) == base64.urlsafe_b64encode(binary).decode().rstrip("=")
    assert upload_answer(text) == text.decode() and upload_answer(text + b"\n") == text.decode()
    with pytest.raises(MegaChunkError) as caught:
        upload_answer(b"-14")
    assert caught.value.code == -14
    for garbage in (b"<html>", bytes(36), b"\xff\xfe", b"OK"):
        with pytest.raises(MegaBadUploadAnswer):
            upload_answer(garbage)
    # The web client starts such an upload again on a fresh URL ($FATAL in upload2.js).
    assert action_for(MegaBadUploadAnswer()) is Action.RESTART_UPLOAD


# -- the fingerprint (attribute 'c') ------------------------------------------------------


def streamed_fingerprint(data: bytes, seed: int) -> bytes:
    fingerprint = Fingerprint(len(data))
    rng, position = random.Random(seed), 0
    while position < len(data):
        step = rng.choice([1, 7, 63, 64, 65, 4096, 100_000])
        fingerprint.add(memoryview(data)[position : position + step])
        position += step
    return fingerprint.crc()


@pytest.mark.parametrize(
    "size", [0, 1, 15, 16, 17, 100, 8191, 8192, 8193, 8257, 20_000, 300_001, MiB + 5]
)
def test_the_fingerprint_taken_while_streaming_is_the_sdks(size: int) -> None:
    data = payload(size, seed=9)
    assert streamed_fingerprint(data, size) == fingerprint_of(data)


@pytest.mark.parametrize("size", [5, 8192, 8193, 20_000, 300_001])
def test_a_fingerprint_carried_between_processes_is_the_same(size: int) -> None:
    """A resumable upload's pieces arrive anywhere: the state between them is enough."""
    data = payload(size, seed=10)
    cuts = sorted({0, size, *range(0, size, max(1, size // 7)), size // 3 + 1})
    state = None
    for start, end in itertools.pairwise(cuts):
        fingerprint = Fingerprint.resume(size, state)
        fingerprint.add(data[start:end])
        state = json.loads(json.dumps(fingerprint.state()))  # as stored, text
        assert len(json.dumps(state)) < (12_000 if size <= 8192 else 200)
    assert Fingerprint.resume(size, state).crc() == fingerprint_of(data)


XORSHIFT_MASK = 0xFFFFFFFF


def _xorshift(x: int) -> int:
    x ^= (x << 13) & XORSHIFT_MASK
    x ^= x >> 17
    return x ^ ((x << 5) & XORSHIFT_MASK)


def _apply(columns: list[int], vector: int) -> int:
    result, bit = 0, 0
    while vector:
        if vector & 1:
            result ^= columns[bit]
        vector >>= 1
        bit += 1
    return result


def xorshift_bytes(seed: int, offset: int, count: int) -> bytes:
    """Bytes ``offset`` to ``offset + count`` of the SDK test's xorshift32 stream (each
    byte the low 8 bits of the next state), reached by jumping: xorshift32 is linear over
    GF(2), so its n-th state is a matrix power applied to the seed."""
    power = [_xorshift(1 << bit) for bit in range(32)]  # the step as 32 columns
    state, steps = seed, offset
    while steps:
        if steps & 1:
            state = _apply(power, state)
        power = [_apply(power, column) for column in power]
        steps >>= 1
    out = bytearray()
    for _ in range(count):
        state = _xorshift(state)
        out.append(state & 0xFF)
    return bytes(out)


@pytest.mark.parametrize(
    ("mib", "expected"),
    [
        (40, "6iqpUy7DdAKx5NIRg31i_g"),
        (52, "7SMVr_-v9_H7MDsN9yuVGA"),
        (88, "3hhTVPVhwzudmjN1odbO6w"),
    ],
)
def test_the_fingerprint_matches_the_sdks_test_vectors(mib: int, expected: str) -> None:
    # tests/unit/FileFingerprint_CRC_test.cpp in the SDK: xorshift32 data seeded with
    # 0xA5A5A5A5, the CRC part in base64url. Only the sampled windows matter, so the
    # stream carries them and zeros between (a fingerprint never looks there).
    size = mib * MiB
    fingerprint = Fingerprint(size)
    zeros, position = memoryview(bytes(MiB)), 0
    for offset in window_offsets(size):
        while position < offset:
            step = min(offset - position, MiB)
            fingerprint.add(zeros[:step])
            position += step
        fingerprint.add(xorshift_bytes(0xA5A5A5A5, offset, 64))
        position += 64
    while position < size:
        step = min(size - position, MiB)
        fingerprint.add(zeros[:step])
        position += step
    crc = fingerprint.crc()
    assert base64.urlsafe_b64encode(crc).decode().rstrip("=") == expected


def test_the_fingerprint_attribute_is_the_sdks_serialisation() -> None:
    crc = bytes(range(3, 19))
    for mtime, tail in [(0, b"\x00"), (2, b"\x01\x02"), (1_700_000_000, b"\x04\x00\xf1\x53\x65")]:
        raw = base64.urlsafe_b64decode(fingerprint_attribute(crc, mtime) + "==")
        assert raw == crc + tail
    with pytest.raises(ValueError):
        Fingerprint(10).crc()  # not all bytes seen


# -- the data path against the emulator ------------------------------------------------

EMAIL, PASSWORD = "uploader@example.com", "emulated password 1"
FAST = RetryPolicy(attempts=6, deadline_s=20, initial_s=0.01, max_s=0.05, waits=QUICK_WAITS)
MEGA_EMULATOR = EmulatorOptions(seed=11, accounts=((EMAIL, PASSWORD),))


def mega_settings(emu: MegaEmulator, tmp_path: Path, **overrides: Any) -> MegaSettings:
    values: dict[str, Any] = {
        "email": EMAIL,
        "password": PASSWORD,
        "api_url": emu.url,
        "session_file": tmp_path / "session.json",
        "retry_initial_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "upload_deadline_seconds": 20,
    }
    values.update(overrides)
    return MegaSettings(_env_file=None, **values)


@pytest.fixture
def backend(emulator: MegaEmulator, tmp_path: Path) -> Iterator[MegaBackend]:
    store = MegaBackend(mega_settings(emulator, tmp_path))
    store.start()
    yield store
    store.close()


@pytest.fixture
def client(emulator: MegaEmulator, tmp_path: Path) -> Iterator[MegaClient]:
    mega = MegaClient(emulator.url, EMAIL, PASSWORD, tmp_path / "client-session.json", policy=FAST)
    mega.ensure_login()
    yield mega
    mega.close()


def source_file(tmp_path: Path, size: int, seed: int = 5) -> tuple[Path, bytes]:
    data = payload(size, seed)
    path = tmp_path / f"source-{size}"
    path.write_bytes(data)
    return path, data


def root_of(client: MegaClient) -> str:
    return next(n["h"] for n in client.api({"a": "f", "c": 1})["f"] if n["t"] == 2)


def upload_to_root(client: MegaClient, path: Path, size: int, limits: UploadLimits) -> str:
    sent = send_file(client, path, size, limits)
    handle = put_file_node(client, root_of(client), sent, path.name).handle
    return export_link(client, handle, sent.node_key)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 131071, 131073, MiB + 5])
def test_backend_stores_a_file_the_verifier_decrypts(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path, size: int
) -> None:
    path, data = source_file(tmp_path, size)
    stored = backend.store(path, "report (final).pdf", size)
    assert stored.link.startswith("https://mega.nz/file/")
    verify(emulator.url, stored.link, data, name="report (final).pdf")
    node = emulator.node(stored.handle)
    assert node["s"] == size and node["t"] == 0


def test_a_failed_region_is_resent_alone(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, data = source_file(tmp_path, 3 * MiB + 7)
    limits = UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    planned = len(regions(3 * MiB + 7, MiB))
    emulator.faults.update(chunk_http500_next=2, chunk_http503_next=1, chunk_http429_next=1)
    emulator.reset_stats()
    link = upload_to_root(client, path, len(data), limits)
    verify(emulator.url, link, data)
    stats = emulator.stats()
    assert stats["commands"]["u"] == 1  # no restart of the file
    assert stats["chunk_posts"] == planned + 4


def test_a_busy_upload_server_is_waited_for_not_counted(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # The SDK sends the same piece again after a fixed 5 s (503) or 0.5 s (429), however
    # often (TransferSlot::processRequestFailure); only the deadline ends that.
    path, data = source_file(tmp_path, 2 * MiB + 9)
    policy = RetryPolicy(attempts=2, deadline_s=20, initial_s=0.01, max_s=0.05, waits=QUICK_WAITS)
    emulator.faults.update(chunk_http503_next=3, chunk_http429_next=3)
    link = upload_to_root(
        client, path, len(data), UploadLimits(region_bytes=MiB, chunk_policy=policy)
    )
    verify(emulator.url, link, data)
    stats = emulator.stats()
    assert stats["faults_injected"] == {"chunk_http503": 3, "chunk_http429": 3}
    assert stats["commands"]["u"] == 1


def test_a_dropped_connection_resends_the_region(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, data = source_file(tmp_path, 2 * MiB + 1)
    emulator.faults.chunk_drop_next = 2
    link = upload_to_root(
        client, path, len(data), UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    )
    verify(emulator.url, link, data)
    assert emulator.stats()["faults_injected"]["chunk_drop"] == 2


@pytest.mark.parametrize("fault", ["chunk_error_next", "chunk_http403_next", "chunk_http404_next"])
def test_a_dead_upload_url_restarts_the_file_on_a_fresh_one(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path, fault: str
) -> None:
    path, data = source_file(tmp_path, MiB + 5)
    emulator.faults.update(**{fault: 1})
    emulator.reset_stats()
    link = upload_to_root(client, path, len(data), UploadLimits(chunk_policy=FAST))
    verify(emulator.url, link, data)
    assert emulator.stats()["commands"]["u"] == 2


def test_restarts_are_bounded(client: MegaClient, emulator: MegaEmulator, tmp_path: Path) -> None:
    path, _ = source_file(tmp_path, 100)
    emulator.faults.chunk_http403_next = 50
    emulator.reset_stats()
    with pytest.raises(MegaError) as caught:
        send_file(client, path, 100, UploadLimits(restarts=2, chunk_policy=FAST))
    assert isinstance(to_storage_error(caught.value), UpstreamRejected)
    assert emulator.stats()["commands"]["u"] == 3


def test_exhausted_transfer_quota_fails_at_once(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, _ = source_file(tmp_path, 1000)
    emulator.faults.chunk_http509_next = 1
    with pytest.raises(UpstreamRejected, match="MEGA transfer quota exceeded"):
        backend.store(path, "a.bin", 1000)
    assert emulator.stats()["chunk_posts"] == 1


def test_a_full_account_is_storage_full(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, _ = source_file(tmp_path, 1000)
    emulator.faults.over_quota_upload_url = True
    with pytest.raises(StorageFull):
        backend.store(path, "a.bin", 1000)


def test_slow_chunks_hit_the_total_deadline(emulator: MegaEmulator, tmp_path: Path) -> None:
    store = MegaBackend(
        mega_settings(emulator, tmp_path, upload_deadline_seconds=1.5, read_timeout=0.5)
    )
    store.start()
    path, _ = source_file(tmp_path, 3 * MiB)
    store.store(path, "warm-up.bin", 3 * MiB)  # log-in and folder outside the measurement
    emulator.faults.chunk_delay = 0.8
    started = time.monotonic()
    with pytest.raises(StorageTimeout):
        store.store(path, "slow.bin", 3 * MiB)
    assert time.monotonic() - started < 3.0
    store.close()


def test_a_removed_folder_is_made_again(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # Someone removes the upload folder in MEGA's web app. MEGA does not refuse a 'p' into
    # it: "the API automatically adds the new node/s into the rubbish bin" (the SDK's
    # CommandPutNodes), where the link dies when the bin is emptied.
    path, data = source_file(tmp_path, 20)
    first = backend.store(path, "one.txt", 20)
    parent = emulator.node(first.handle)["p"]
    emulator.store.delete_node(parent)
    second = backend.store(path, "two.txt", 20)
    assert emulator.stats()["put_nodes_into_removed_targets"] == 1
    assert emulator.location(second.handle) == "root"
    folder = emulator.node(second.handle)["p"]
    assert folder != parent and emulator.location(folder) == "root"
    verify(emulator.url, second.link, data, name="two.txt")
    third = backend.store(path, "three.txt", 20)  # straight into the new folder
    assert emulator.node(third.handle)["p"] == folder


def test_a_folder_moved_to_the_rubbish_bin_is_noticed_before_the_next_upload(
    emulator: MegaEmulator, tmp_path: Path
) -> None:
    # MEGA takes a 'p' into a folder in the rubbish bin like any other; the service must
    # notice the move itself. It looks again at least every folder_check_s.
    store = MegaBackend(mega_settings(emulator, tmp_path), folder_check_s=0)
    store.start()
    try:
        path, data = source_file(tmp_path, 30)
        first = store.store(path, "one.txt", 30)
        folder = emulator.node(first.handle)["p"]
        rubbish = emulator.store.accounts[EMAIL].rubbish
        store._ready_client().api({"a": "m", "n": folder, "t": rubbish})
        second = store.store(path, "two.txt", 30)
        assert emulator.location(second.handle) == "root"
        assert emulator.node(second.handle)["p"] != folder
        verify(emulator.url, second.link, data, name="two.txt")
    finally:
        store.close()


def test_an_upload_gone_with_its_storage_server_is_sent_again(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # 'p' answering -9 is "file-storage server unavailable" to the SDK, which uploads the
    # whole file again (Transfer::failed in src/transfer.cpp); the token is of no more use.
    path, data = source_file(tmp_path, MiB + 3)
    backend.store(path, "warm.bin", len(data))  # log-in and folder
    emulator.reset_stats()
    emulator.faults.put_nodes_storage_gone_next = 1
    stored = backend.store(path, "again.bin", len(data))
    verify(emulator.url, stored.link, data, name="again.bin")
    stats = emulator.stats()
    assert stats["faults_injected"]["put_nodes_storage_gone"] == 1
    assert stats["commands"]["u"] == 2 and stats["files_stored"] == 1


def test_the_folder_is_created_once_and_nested(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, _ = source_file(tmp_path, 3)
    for name in ("a", "b", "c"):
        backend.store(path, name, 3)
    assert emulator.stats()["folders_created"] == 2  # Paimon and Paimon/uploads
    other = MegaBackend(mega_settings(emulator, tmp_path))  # e.g. another worker process
    other.store(path, "d", 3)
    other.close()
    assert emulator.stats()["folders_created"] == 2


def test_readiness_reports_wrong_credentials_without_hammering_the_login(
    emulator: MegaEmulator, tmp_path: Path
) -> None:
    store = MegaBackend(mega_settings(emulator, tmp_path, password="not the password"))
    store.start()
    answers = [store.readiness() for _ in range(5)]
    assert not any(a.ready for a in answers)
    assert all("wrong email or password" in a.reason for a in answers)
    assert "not the password" not in answers[0].reason
    assert emulator.stats()["logins_failed"] == 1
    path, _ = source_file(tmp_path, 3)
    with pytest.raises(StorageLoginFailed):
        store.store(path, "x", 3)
    store.close()


def test_readiness_is_true_once_logged_in_with_the_folder(
    backend: MegaBackend, emulator: MegaEmulator
) -> None:
    assert backend.readiness() == Readiness(True)
    assert emulator.stats()["folders_created"] == 2


def test_start_does_no_network_io(tmp_path: Path) -> None:
    store = MegaBackend(
        MegaSettings(
            _env_file=None,
            email=EMAIL,
            password=PASSWORD,
            api_url="http://127.0.0.1:9",
            session_file=tmp_path / "s.json",
            retry_attempts=1,
            connect_timeout=0.5,
        )
    )
    store.start()  # MEGA unreachable: still starts
    state = store.readiness()
    assert not state.ready and "MEGA" in state.reason
    store.close()


def test_delete_removes_the_node_and_ignores_a_missing_one(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, _ = source_file(tmp_path, 10)
    stored = backend.store(path, "gone.txt", 10)
    backend.delete(stored.handle)
    with pytest.raises(KeyError):
        emulator.node(stored.handle)
    backend.delete(stored.handle)


# -- as MEGA's own clients upload ----------------------------------------------------------


def test_uploads_speak_the_web_clients_upload_protocol(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # 'u' with "v": 2, as the web client (upload2.js) and megajs ask: binary tokens.
    path, data = source_file(tmp_path, 2 * MiB + 3)
    stored = backend.store(path, "v2.bin", len(data))
    verify(emulator.url, stored.link, data, name="v2.bin")
    stats = emulator.stats()
    assert stats["upload_urls_v2"] == 1 and stats["upload_urls_v0"] == 0


@pytest.mark.parametrize("version", [0, 2, 3], ids=["legacy", "v2", "v3"])
def test_every_form_of_the_upload_servers_answers_is_read(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path, version: int
) -> None:
    # Whatever form the upload server answers in (empty or "0" acknowledgements, a text or
    # a binary token), the file is stored, at the first try.
    path, data = source_file(tmp_path, 3 * MiB + 5)
    emulator.faults.upload_answer_version = version
    link = upload_to_root(
        client, path, len(data), UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    )
    verify(emulator.url, link, data)
    assert emulator.stats()["commands"]["u"] == 1


def test_one_session_tag_in_every_put_nodes_of_a_client(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # 'i' is the client's session tag (the SDK's sessionid, JSONWriter::notself), the
    # same in all its commands: MEGA's action packets tell a client its own changes by it.
    path, _ = source_file(tmp_path, 10)
    for name in ("a", "b"):
        backend.store(path, name, 10)
    tags = emulator.stats()["tags"]["p"]
    assert len(tags) == 1 and len(tags[0]) == 10


def test_links_follow_the_accounts_site(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # The SDK links to mega.app when the account's "site" flag is 1 (readmiscflags).
    emulator.faults.site_flag = 1
    path, data = source_file(tmp_path, 100)
    stored = backend.store(path, "site.bin", 100)
    assert stored.link.startswith("https://mega.app/file/")
    verify(emulator.url, stored.link, data, name="site.bin")


def test_uploads_carry_megas_fingerprint_dated_now_or_as_given(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # MEGA's apps show a file's date, recognise copies and sync by 'c' (the SDK writes it on
    # every upload, File::sendPutnodesOfUpload).
    path, data = source_file(tmp_path, 2 * MiB + 77)
    before = int(time.time())
    stored = backend.store(path, "dated.bin", len(data))
    after = int(time.time())
    found = emulator.sdk_fingerprint(stored.handle)
    assert found is not None
    crc, mtime = found
    assert crc == fingerprint_of(data) and before <= mtime <= after
    given = backend.store(path, "given.bin", len(data), StoreExtras(mtime=1_234_567_890))
    assert emulator.sdk_fingerprint(given.handle) == (crc, 1_234_567_890)
    verify(emulator.url, given.link, data, name="given.bin")


def test_upload_urls_are_asked_for_over_ssl(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, _ = source_file(tmp_path, 1000)
    backend.store(path, "a.bin", 1000)
    stats = emulator.stats()
    assert stats["upload_urls_ssl"] == 1 and stats["upload_urls_without_ssl"] == 0


@pytest.mark.parametrize(
    "emulator", [EmulatorOptions(seed=12, accounts=((EMAIL, PASSWORD),), tls=True)], indirect=True
)
def test_over_https_file_data_goes_only_to_https_upload_urls(
    emulator: MegaEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_emulator = emulator
    assert tls_emulator.ca_file is not None and tls_emulator.url.startswith("https://")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_emulator.ca_file))
    path, data = source_file(tmp_path, 3 * MiB)
    store = MegaBackend(mega_settings(tls_emulator, tmp_path))
    store.start()
    try:
        stored = store.store(path, "secure.bin", len(data))
        assert tls_emulator.stats()["upload_urls_without_ssl"] == 0
        # MEGA handing out an http:// URL anyway: not one byte is sent to it.
        tls_emulator.faults.plain_upload_urls = True
        tls_emulator.reset_stats()
        with pytest.raises(UpstreamRejected, match="unencrypted upload URL"):
            store.store(path, "plain.bin", len(data))
        assert tls_emulator.stats()["chunk_posts"] == 0
    finally:
        store.close()
    assert stored.link.startswith("https://mega.nz/file/")


@pytest.mark.parametrize(
    "name", ["résumé.pdf", "报告.docx", "emoji 🎉 name.txt", 'quote " and \\ slash.bin']
)
def test_names_read_by_mega_apps_as_written(
    backend: MegaBackend, emulator: MegaEmulator, tmp_path: Path, name: str
) -> None:
    path, data = source_file(tmp_path, 100)
    stored = backend.store(path, name, 100)
    # The name as the SDK (desktop and mobile apps, MEGAcmd) reads the attribute block.
    assert name in emulator.sdk_names(EMAIL)
    verify(emulator.url, stored.link, data, name=name)


def test_folder_names_are_raw_utf8_too_and_found_again(
    emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, _ = source_file(tmp_path, 10)
    first = MegaBackend(mega_settings(emulator, tmp_path, folder="Téléversés/报告"))
    first.store(path, "a", 10)
    first.close()
    assert {"Téléversés", "报告"} <= set(emulator.sdk_names(EMAIL))
    second = MegaBackend(
        mega_settings(
            emulator,
            tmp_path,
            folder="Téléversés/报告",
            session_file=tmp_path / "other" / "s.json",
        )
    )
    second.store(path, "b", 10)
    second.close()
    assert emulator.stats()["folders_created"] == 2  # found, not made twice


@pytest.mark.parametrize("code", [-3, -6, -7])
def test_upload_server_restart_codes_start_over_on_a_fresh_url(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path, code: int
) -> None:
    path, data = source_file(tmp_path, 2 * MiB + 3)
    emulator.reset_stats()
    emulator.faults.update(chunk_error_next=1, chunk_error_code=code)
    link = upload_to_root(
        client, path, len(data), UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    )
    verify(emulator.url, link, data)
    # Retrying on the same URL would only meet the same code again (the emulator keeps
    # answering it there, as MEGA's upload servers do).
    assert emulator.stats()["commands"]["u"] == 2


def test_the_completion_token_ends_the_upload_while_a_piece_is_still_retried(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # The first piece arrives, but its answer is lost; while it waits to be sent again,
    # the last piece brings the token. The SDK takes the token as completion ("could be a
    # network error getting the result, even though it succeeded server side",
    # TransferSlot::doio) with the other pieces' MACs; the piece sent again would only
    # meet an upload URL that has served its purpose.
    path, data = source_file(tmp_path, 4 * MiB)
    emulator.faults.update(
        chunk_answer_lost_next=1, chunk_answer_lost_offset=0, completed_upload_status=403
    )
    slow_retry = RetryPolicy(attempts=6, deadline_s=20, initial_s=1.0, max_s=1.0, waits=QUICK_WAITS)
    limits = UploadLimits(region_bytes=MiB, parallel=3, chunk_policy=slow_retry)
    link = upload_to_root(client, path, len(data), limits)
    verify(emulator.url, link, data)
    stats = emulator.stats()
    assert stats["faults_injected"]["chunk_answer_lost"] == 1
    assert stats["commands"]["u"] == 1


def test_upload_server_minus_14_resends_the_same_piece(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path
) -> None:
    path, data = source_file(tmp_path, 2 * MiB + 3)
    emulator.reset_stats()
    emulator.faults.update(chunk_error_next=1, chunk_error_code=-14)
    link = upload_to_root(
        client, path, len(data), UploadLimits(region_bytes=MiB, chunk_policy=FAST)
    )
    verify(emulator.url, link, data)
    assert emulator.stats()["commands"]["u"] == 1  # the same URL, the piece sent again


def test_pieces_never_run_past_the_window(
    client: MegaClient, emulator: MegaEmulator, tmp_path: Path
) -> None:
    # The first piece is slow; the others must not run more than the window past it, or
    # the upload server gives up on the upload (-4) as MEGA's do beyond 256 MiB.
    path, data = source_file(tmp_path, 6 * MiB)
    emulator.reset_stats()
    emulator.faults.update(
        upload_window_bytes=2 * MiB, chunk_delay_offset=0, chunk_offset_delay=0.5
    )
    limits = UploadLimits(
        region_bytes=MiB, parallel=3, window_bytes=2 * MiB, restarts=1, chunk_policy=FAST
    )
    link = upload_to_root(client, path, len(data), limits)
    verify(emulator.url, link, data)
    stats = emulator.stats()
    assert stats["window_refusals"] == 0 and stats["commands"]["u"] == 1


def test_the_default_window_is_the_sdks() -> None:
    limits = UploadLimits(chunk_policy=FAST)
    assert limits.window_bytes == 256 * MiB


def test_backends_sharing_a_session_store_log_in_once(
    emulator: MegaEmulator, tmp_path: Path
) -> None:
    # The session store is the one seam for where the session lives (a file by default).
    store = MemorySessionStore()
    settings = mega_settings(emulator, tmp_path)
    path, _ = source_file(tmp_path, 10)
    for name in ("a", "b"):
        backend = MegaBackend(settings, store)
        backend.store(path, name, 10)
        backend.close()
    assert emulator.stats()["logins_ok"] == 1
    assert not settings.session_file.exists()
