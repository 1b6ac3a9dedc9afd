"""Account key material the way MEGA derives and encodes it.

Everything here mirrors what a client computes on log-in, so that an
unmodified client decodes what the emulator hands out:

* v1 accounts: the password key comes from ``prepare_key`` (65536 AES rounds)
  and the user hash ``uh`` from ``stringhash(email)``;
* v2 accounts: PBKDF2-HMAC-SHA512 over a 16-byte salt, 100000 iterations,
  32 bytes; the first half is the password key, the second half is ``uh``;
* the master key is sent AES-ECB encrypted with the password key;
* the RSA private key is sent as the MPIs p, q, d, u concatenated, padded to
  16 bytes and AES-ECB encrypted with the master key;
* the session id is sent RSA encrypted (``csid``), padded to the modulus' length
  minus 2 bytes; clients keep the first 43 bytes of that fixed width as the sid.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from Crypto.Cipher import AES
from cryptography.hazmat.primitives.asymmetric import rsa

from ..codec import b64url_encode, mpi_encode

V2_ITERATIONS = 100_000
SID_BYTES = 43
_V1_INITIAL_KEY = struct.pack(">4I", 0x93C467E3, 0x7DB0C7A4, 0xD1BE3F81, 0x0152CB56)


def _words(data: bytes) -> bytes:
    """Zero-pad to whole 32-bit words, as the clients' str_to_a32 does."""
    return data + b"\0" * (-len(data) % 4)


def js_string_bytes(text: str) -> bytes:
    """A string as the web client's ``str_to_a32`` packs it, which the SDK copies for v1
    passwords (``MegaClient::utf8_to_a32forjs`` in ``src/megaclient.cpp``): one byte lane
    per UTF-16 code unit, each unit shifted into its lane in 32-bit arithmetic, so the
    high byte of a unit above 0xFF is ORed into the lane before it."""
    utf16 = text.encode("utf-16-be")
    units = [int.from_bytes(utf16[i : i + 2], "big") for i in range(0, len(utf16), 2)]
    words = [0] * ((len(units) + 3) // 4)
    for index, unit in enumerate(units):
        words[index // 4] |= (unit << (24 - 8 * (index % 4))) & 0xFFFFFFFF
    return struct.pack(f">{len(words)}I", *words)


def v1_password_key(password: str) -> bytes:
    """MEGA's prepare_key over any password (``MegaClient::pw_key``). A single-block
    CBC with a zero IV is plain ECB, so one cipher per 16-byte slice is enough."""
    raw = js_string_bytes(password)
    slices = [raw[i : i + 16].ljust(16, b"\0") for i in range(0, len(raw), 16)]
    ciphers = [AES.new(key, AES.MODE_ECB) for key in slices]
    pkey = _V1_INITIAL_KEY
    for _ in range(0x10000):
        for cipher in ciphers:
            pkey = cipher.encrypt(pkey)
    return pkey


def v1_user_hash(email: str, password_key: bytes) -> str:
    """MEGA's stringhash: fold the e-mail into four words, AES it 16384 times,
    keep words 0 and 2."""
    raw = _words(email.encode("latin-1"))
    folded = [0, 0, 0, 0]
    for i, (word,) in enumerate(struct.iter_unpack(">I", raw)):
        folded[i % 4] ^= word
    block = struct.pack(">4I", *folded)
    cipher = AES.new(password_key, AES.MODE_ECB)
    for _ in range(0x4000):
        block = cipher.encrypt(block)
    return b64url_encode(block[0:4] + block[8:12])


def v2_derive(password: str, salt: bytes) -> tuple[bytes, str]:
    """(password key, user hash) of a v2 account."""
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, V2_ITERATIONS, 32)
    return derived[:16], b64url_encode(derived[16:])


def ecb_encrypt(key: bytes, data: bytes) -> bytes:
    return AES.new(key, AES.MODE_ECB).encrypt(data)


@dataclass(frozen=True)
class RsaKey:
    p: int
    q: int
    d: int
    e: int
    u: int

    @property
    def n(self) -> int:
        return self.p * self.q

    def private_blob(self) -> bytes:
        """p, q, d, u as MPIs, padded with random bytes to whole AES blocks."""
        blob = mpi_encode(self.p) + mpi_encode(self.q) + mpi_encode(self.d) + mpi_encode(self.u)
        return blob + os.urandom(-len(blob) % 16)

    def public_blob(self) -> bytes:
        return mpi_encode(self.n) + mpi_encode(self.e)


def generate_rsa_key(bits: int = 2048) -> RsaKey:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
    p, q = numbers.p, numbers.q
    # MEGA's u is the CRT coefficient p^-1 mod q.
    return RsaKey(p=p, q=q, d=numbers.d, e=numbers.public_numbers.e, u=pow(p, -1, q))


def new_session_secret(user_handle: str, leading_zero: bool = False) -> bytes:
    """A session id as MEGA makes it: 43 bytes, the user's handle (11 base64url
    characters) at bytes 16-26, which the SDK checks after decrypting (``CommandLogin``
    in ``src/commands.cpp``: "check that the user's handle included in the session matches
    the own user's handle").

    MEGA's first byte is random, so about one session id in 256 begins with a zero byte;
    here it does when ``leading_zero`` is asked for, never otherwise, so that stock clients
    which drop leading zeros (mega.py) do not fail one log-in in 256 at random.
    """
    handle = user_handle.encode("ascii")
    if len(handle) != 11:
        raise ValueError("a user handle is 11 base64url characters")
    while True:
        secret = os.urandom(16) + handle + os.urandom(SID_BYTES - 27)
        if leading_zero:
            return b"\0" + secret[1:]
        if secret[0]:
            return secret


def encrypt_session_id(key: RsaKey, secret: bytes) -> str:
    """csid: the secret followed by random filler up to the modulus' length minus 2
    bytes, raw-RSA encrypted and MPI encoded. The length is the web client's
    (``crypto_rsaencrypt``: "random padding up to pubkey's byte length minus 2"), and the
    one the SDK reads the session id at (``AsymmCipher::decrypt`` in
    ``src/crypto/cryptopp.cpp``: p's and q's byte lengths minus 2), leading zeros kept."""
    length = (key.n.bit_length() + 7) // 8 - 2
    plain = int.from_bytes(secret + os.urandom(length - len(secret)), "big")
    return b64url_encode(mpi_encode(pow(plain, key.e, key.n)))
