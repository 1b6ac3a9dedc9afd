"""The upload data path without a network: encrypt + MAC with ``app.storage.mega.crypto``,
measured against what OpenSSL does on this machine, and the two AES libraries side by side."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from Crypto.Cipher import AES as PyAES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from app.storage.mega.crypto import BLOCK, FileKey, MacAccumulator, regions, seal_region
from app.storage.mega.upload import UploadLimits

MiB = 1024 * 1024
GiB = 1024 * MiB
OPENSSL_SECONDS = 3
OPENSSL_BLOCK = 16384


def upload_shape() -> tuple[int, int]:
    """The service's region size and regions in flight (its defaults): the one place the
    benchmark reads them, so that a change there is measured here."""
    limits = UploadLimits()
    return int(limits.region_bytes), int(limits.parallel)


def _region_size() -> int:
    return upload_shape()[0]


def encrypt_and_mac(buffer: bytes, workers: int) -> float:
    """Seconds to encrypt and MAC ``buffer`` the way ``upload.py`` does, region by region:
    the region copied into a reused buffer (as a file read would fill it), then
    ``seal_region`` MACs and encrypts it in place; ``workers`` > 1 spreads regions over
    threads, as the upload pipeline does."""
    key = FileKey.generate()
    macs = MacAccumulator(key)
    region_bytes = _region_size()
    plan = regions(len(buffer), region_bytes)
    local = threading.local()

    def one(region: tuple[int, int]) -> None:
        offset, length = region
        work = getattr(local, "buffer", None)
        if work is None:
            work = local.buffer = bytearray(region_bytes + BLOCK)
        work[:length] = buffer[offset : offset + length]
        macs.add_macs(seal_region(key, offset, work, length))

    started = time.perf_counter()
    if workers <= 1:
        for region in plan:
            one(region)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, plan))
    macs.meta_mac()
    return time.perf_counter() - started


def data_path(size: int) -> dict[str, Any]:
    buffer = os.urandom(size)
    encrypt_and_mac(buffer[: 8 * MiB], 1)  # warm-up: imports, OpenSSL's first use
    workers = os.cpu_count() or 1
    single = min(encrypt_and_mac(buffer, 1) for _ in range(2))
    threaded = min(encrypt_and_mac(buffer, workers) for _ in range(2))
    return {
        "bytes": size,
        "region_bytes": _region_size(),
        "single_thread_mb_s": size / single / 1e6,
        "threads": workers,
        "threaded_mb_s": size / threaded / 1e6,
    }


def openssl_cbc() -> dict[str, Any]:
    """``openssl speed -evp aes-128-cbc`` single core, the 16384-byte column, in MB/s."""
    base = ["openssl", "speed", "-evp", "aes-128-cbc", "-seconds", str(OPENSSL_SECONDS)]
    # -bytes runs only the column we read (3 s instead of 18); older builds lack it.
    for command in ([*base, "-bytes", str(OPENSSL_BLOCK)], base):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        value = _parse_speed(result.stdout)
        if value is not None:
            return {"command": " ".join(command), "mb_s": value}
    raise RuntimeError("could not run or parse openssl speed")


def _parse_speed(output: str) -> float | None:
    columns: list[str] = []
    for line in output.splitlines():
        if line.startswith("type"):
            columns = re.findall(r"(\d+) bytes", line)
        elif line.lower().startswith("aes-128-cbc") and columns:
            values = re.findall(r"([\d.]+)k", line)
            if str(OPENSSL_BLOCK) in columns and len(values) == len(columns):
                # openssl prints thousands of bytes per second.
                return float(values[columns.index(str(OPENSSL_BLOCK))]) * 1000 / 1e6
    return None


def _rate(encrypt: Callable[[bytes], object], buffer: bytes, seconds: float = 1.0) -> float:
    encrypt(buffer)
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        encrypt(buffer)
        done += len(buffer)
    return done / elapsed / 1e6


def library_comparison() -> dict[str, float]:
    """AES-128 CTR and CBC over 1 MiB buffers, a fresh cipher per buffer as the upload
    path makes one per region / chunk, in MB/s."""
    key, iv, nonce = os.urandom(16), os.urandom(16), os.urandom(8)
    buffer = os.urandom(MiB)

    def crypto_ctr(data: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.CTR(nonce + bytes(8))).encryptor()
        return enc.update(data) + enc.finalize()

    def crypto_cbc(data: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return enc.update(data) + enc.finalize()

    def pycrypto_ctr(data: bytes) -> bytes:
        return PyAES.new(key, PyAES.MODE_CTR, nonce=nonce, initial_value=0).encrypt(data)

    def pycrypto_cbc(data: bytes) -> bytes:
        return PyAES.new(key, PyAES.MODE_CBC, iv).encrypt(data)

    return {
        "cryptography_ctr_mb_s": _rate(crypto_ctr, buffer),
        "cryptography_cbc_mb_s": _rate(crypto_cbc, buffer),
        "pycryptodome_ctr_mb_s": _rate(pycrypto_ctr, buffer),
        "pycryptodome_cbc_mb_s": _rate(pycrypto_cbc, buffer),
    }


def cpu_floor(size: int) -> dict[str, Any]:
    """CPU seconds per GiB one core needs for the work no MEGA upload can skip: SHA-256
    of the bytes (the answer's checksum), AES-128-CBC over them (MEGA's chunk MACs) and
    AES-128-CTR (the encryption), in 1 MiB buffers, each best of 2."""
    buffer = os.urandom(MiB)
    key = os.urandom(16)
    pieces = max(1, size // MiB)

    def timed(update: Callable[[bytes], object]) -> float:
        started = time.process_time()
        for _ in range(pieces):
            update(buffer)
        return (time.process_time() - started) * GiB / (pieces * MiB)

    def best(make: Callable[[], Callable[[bytes], object]]) -> float:
        timed(make())  # warm-up
        return min(timed(make()) for _ in range(2))

    parts = {
        "sha256": best(lambda: hashlib.sha256().update),
        "aes_cbc": best(
            lambda: Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor().update
        ),
        "aes_ctr": best(
            lambda: Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update
        ),
    }
    return {
        "bytes": pieces * MiB,
        "parts_cpu_s_per_gib": parts,
        "cpu_s_per_gib": sum(parts.values()),
    }


def loopback_cpu(size: int) -> dict[str, Any]:
    """CPU seconds per GiB to move the bytes once through a loopback TCP connection
    (sender and receiver both in this process): what receiving the body and sending it on
    to MEGA cost the server in the kernel, which the floor above leaves out."""
    buffer = os.urandom(MiB)
    pieces = max(1, size // MiB)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()

    def send() -> None:
        for _ in range(pieces):
            sender.sendall(buffer)
        sender.shutdown(socket.SHUT_WR)

    sink = bytearray(256 * 1024)
    with sender, receiver:
        started = time.process_time()
        thread = threading.Thread(target=send)
        thread.start()
        while receiver.recv_into(sink):
            pass
        thread.join()
        seconds = time.process_time() - started
    return {
        "bytes": pieces * MiB,
        "cpu_s": seconds,
        "cpu_s_per_gib": seconds * GiB / (pieces * MiB),
    }
