"""Independent check of a file stored through a MEGA link: download, decrypt, verify.

Written apart from the application's own crypto (pycryptodome instead of
``cryptography``, its own link parser) so that a mistake in one is not repeated in
the other. mega.py cannot serve here: its download crashes on empty files and on
last chunks of 16 bytes or less, and its link parser rejects handles with '-'.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
import time
import zlib
from dataclasses import dataclass

import requests
from Crypto.Cipher import AES
from Crypto.Util import Counter

TIMEOUT = 30
TRANSIENT = (-3, -4, -18)  # EAGAIN, ERATELIMIT, ETEMPUNAVAIL: ask again
TRANSIENT_ATTEMPTS = 30
# mega.app when the account's "site" flag says so (the SDK's MegaClient::readmiscflags).
_LINK = re.compile(r"^https://mega\.(?:nz|app)/file/([A-Za-z0-9_-]+)#([A-Za-z0-9_-]+)$")


class VerificationError(AssertionError):
    """The stored file does not match what was uploaded."""


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def words(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(data) // 4}I", data)


def packed(values: tuple[int, ...] | list[int]) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def parse_link(link: str) -> tuple[str, tuple[int, ...]]:
    """(public handle, 8-word node key) of a ``https://mega.nz/file/<h>#<key>`` link (or
    mega.app)."""
    match = _LINK.match(link)
    if not match:
        raise VerificationError(f"not a MEGA file link: {link!r}")
    key = words(b64url_decode(match.group(2)))
    if len(key) != 8:
        raise VerificationError("the link's key is not 8 words long")
    return match.group(1), key


def reference_chunks(size: int) -> list[tuple[int, int]]:
    """MEGA's chunk boundaries, written out independently of the application."""
    chunks, offset, length = [], 0, 0x20000
    while offset < size:
        step = min(length, size - offset)
        chunks.append((offset, step))
        offset += step
        length = min(length + 0x20000, 0x100000)
    return chunks


def meta_mac_of(aes_key: bytes, nonce: bytes, plaintext: bytes) -> tuple[int, int]:
    """MEGA's meta MAC of a plaintext, with pycryptodome's CBC over each chunk."""
    file_mac = AES.new(aes_key, AES.MODE_CBC, bytes(16))
    last = bytes(16)
    for offset, length in reference_chunks(len(plaintext)):
        chunk = plaintext[offset : offset + length]
        chunk += bytes(-len(chunk) % 16)
        chunk_mac = AES.new(aes_key, AES.MODE_CBC, nonce + nonce).encrypt(chunk)[-16:]
        last = file_mac.encrypt(chunk_mac)
    w = words(last)
    return (w[0] ^ w[1], w[2] ^ w[3])


def fingerprint_of(data: bytes) -> bytes:
    """The 16 CRC bytes of MEGA's fingerprint (the node attribute ``c``) of ``data``, as
    the SDK's ``FileFingerprint::genfingerprint`` (src/filefingerprint.cpp) computes them
    from a whole file: up to 16 bytes the bytes zero-padded; up to 8192 the CRC32 of each
    quarter; beyond, of 4 x 32 windows of 64 bytes at (size - 64) * k / 127. Each CRC32
    big-endian. Written apart from the application's streaming version."""
    size = len(data)
    if size <= 16:
        return data + bytes(16 - size)
    if size <= 8192:
        quarters = [data[i * size // 4 : (i + 1) * size // 4] for i in range(4)]
        return b"".join(zlib.crc32(q).to_bytes(4, "big") for q in quarters)
    lanes = []
    for lane in range(4):
        sampled = b""
        for block in range(32):
            offset = min(size - 64, (size - 64) * (lane * 32 + block) // 127)
            sampled += data[offset : offset + 64]
        lanes.append(zlib.crc32(sampled).to_bytes(4, "big"))
    return b"".join(lanes)


def split_key(key: tuple[int, ...]) -> tuple[bytes, bytes, tuple[int, int]]:
    """(AES key, nonce, meta MAC) inside an 8-word node key."""
    aes = packed([key[0] ^ key[4], key[1] ^ key[5], key[2] ^ key[6], key[3] ^ key[7]])
    return aes, packed(list(key[4:6])), (key[6], key[7])


def decrypt_attributes(encrypted: str, aes_key: bytes) -> dict:
    plain = AES.new(aes_key, AES.MODE_CBC, bytes(16)).decrypt(b64url_decode(encrypted))
    text = plain.rstrip(b"\0").decode()
    if not text.startswith('MEGA{"'):
        raise VerificationError("the attributes do not decrypt with the link's key")
    return json.loads(text[4:])


def _file_info(http: requests.Session, api_url: str, public_handle: str) -> dict:
    """The 'g' answer, retried a bounded number of times while faults answer EAGAIN & co."""
    answer: object = None
    for _ in range(TRANSIENT_ATTEMPTS):
        answer = http.post(
            f"{api_url}/cs",
            # A fresh id per request: MEGA answers a repeated id from its cache.
            params={"id": secrets.token_hex(5)},
            data=json.dumps([{"a": "g", "g": 1, "p": public_handle}]),
            timeout=TIMEOUT,
        ).json()
        if isinstance(answer, list) and answer and isinstance(answer[0], dict):
            return answer[0]
        if answer not in TRANSIENT and not (isinstance(answer, list) and answer[0] in TRANSIENT):
            break
        time.sleep(0.01)
    raise VerificationError(f"'g' failed with {answer!r}")


@dataclass(frozen=True)
class Downloaded:
    name: str
    plaintext: bytes


def download(api_url: str, link: str, session: requests.Session | None = None) -> Downloaded:
    """Fetch a linked file with 'g' from a MEGA API at ``api_url``, decrypt it and check
    its MAC against the meta MAC in the link's key."""
    http = session or requests.Session()
    public_handle, key = parse_link(link)
    info = _file_info(http, api_url, public_handle)
    response = http.get(info["g"], timeout=TIMEOUT)
    response.raise_for_status()
    ciphertext = response.content
    if len(ciphertext) != info["s"]:
        raise VerificationError(f"downloaded {len(ciphertext)} bytes of {info['s']}")
    aes_key, nonce, expected_mac = split_key(key)
    counter = Counter.new(64, prefix=nonce, initial_value=0)
    plaintext = AES.new(aes_key, AES.MODE_CTR, counter=counter).decrypt(ciphertext)
    if meta_mac_of(aes_key, nonce, plaintext) != expected_mac:
        raise VerificationError("the MAC of the decrypted file does not match the link's key")
    name = decrypt_attributes(info["at"], aes_key).get("n", "")
    return Downloaded(name=name, plaintext=plaintext)


def verify(api_url: str, link: str, original: bytes, name: str | None = None) -> None:
    """Raise VerificationError unless the linked file decrypts to ``original`` (and has
    the file name ``name`` when one is given)."""
    got = download(api_url, link)
    if got.plaintext != original:
        sizes = f"{len(got.plaintext)} vs {len(original)} bytes"
        raise VerificationError(f"the stored bytes differ ({sizes})")
    if name is not None and got.name != name:
        raise VerificationError(f"stored under {got.name!r}, expected {name!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.mega_verify --api URL LINK [--output FILE]``: fetch a link's file."""
    import argparse
    import hashlib
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m tests.mega_verify",
        description="Download a MEGA link's file from an API (e.g. the emulator), decrypt it "
        "and check its MAC.",
    )
    parser.add_argument("link", help="https://mega.nz/file/<handle>#<key>")
    parser.add_argument("--api", required=True, help="MEGA API base URL, e.g. the emulator's")
    parser.add_argument("--output", type=Path, help="write the decrypted file here")
    args = parser.parse_args(argv)
    try:
        got = download(args.api.rstrip("/"), args.link)
    except (VerificationError, requests.RequestException) as error:
        print(f"FAIL: {error}")
        return 1
    if args.output:
        args.output.write_bytes(got.plaintext)
    digest = hashlib.sha256(got.plaintext).hexdigest()
    print(f"OK: {got.name!r}, {len(got.plaintext)} bytes, sha256 {digest}, MAC verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
