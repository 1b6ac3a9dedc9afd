"""Accounts known to the emulator: credentials check data and key material."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..codec import b64url_encode
from .crypto import (
    RsaKey,
    ecb_encrypt,
    generate_rsa_key,
    v1_password_key,
    v1_user_hash,
    v2_derive,
)


@dataclass
class Account:
    email: str
    version: int
    user_handle: str
    user_hash: str  # what the client must send as ``uh``
    salt: bytes | None  # v2 only
    master_key: bytes
    encrypted_master_key: str  # ``k``: master key under the password key
    rsa: RsaKey
    encrypted_privk: str  # ``privk``: the MPI blob under the master key
    pubk: str
    since: int = field(default_factory=lambda: int(time.time()))
    # Base32 secret of an account with two-factor authentication, None without.
    totp_secret: str | None = None
    # Handles of the three special nodes, filled in by the node store.
    root: str = ""
    inbox: str = ""
    rubbish: str = ""


def create_account(
    email: str,
    password: str,
    version: int,
    user_handle: str,
    rsa_key: RsaKey | None = None,
) -> Account:
    if version not in (1, 2):
        raise ValueError("account version must be 1 or 2")
    email = email.lower()  # clients lower-case the address before hashing it
    salt: bytes | None
    if version == 2:
        salt = os.urandom(16)
        password_key, user_hash = v2_derive(password, salt)
    else:
        salt = None
        password_key = v1_password_key(password)
        user_hash = v1_user_hash(email, password_key)
    master_key = os.urandom(16)
    key = rsa_key or generate_rsa_key()
    return Account(
        email=email,
        version=version,
        user_handle=user_handle,
        user_hash=user_hash,
        salt=salt,
        master_key=master_key,
        encrypted_master_key=b64url_encode(ecb_encrypt(password_key, master_key)),
        rsa=key,
        encrypted_privk=b64url_encode(ecb_encrypt(master_key, key.private_blob())),
        pubk=b64url_encode(key.public_blob()),
    )
