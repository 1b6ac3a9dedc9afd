"""Stock mega.py 1.0.8 ``Mega.upload`` against the emulator.

``tests.mega_emulator.stock_client`` points mega.py at the emulator (only where
``_api_request`` posts changes); ``upload`` itself is not touched.
"""

from __future__ import annotations

import time
from pathlib import Path

from mega.crypto import a32_to_base64, base64_to_a32, decrypt_key

from tests.mega_emulator.stock_client import EmulatedMega


def logged_in(api_url: str, email: str, password: str) -> EmulatedMega:
    # mega.py waits 2-60 s between EAGAIN retries; bounded so a broken emulator cannot
    # hang the run.
    mega = EmulatedMega(api_url, timeout=160, eagain_attempts=100, eagain_wait_s=2)
    mega.login(email, password)
    mega.get_files()  # sets root_id, so that the first timed upload does not list files
    return mega


def timed_upload(mega: EmulatedMega, path: Path, name: str) -> tuple[float, str]:
    """Seconds ``Mega.upload`` took, and a ``https://mega.nz/file/<h>#<key>`` link to the
    node it made (built from the node itself, as the server builds its links)."""
    started = time.perf_counter()
    answer = mega.upload(str(path), dest_filename=name)
    seconds = time.perf_counter() - started
    node = answer["f"][0]
    public = mega._api_request({"a": "l", "n": node["h"]})
    encrypted_key = node["k"][node["k"].index(":") + 1 :]
    key = decrypt_key(base64_to_a32(encrypted_key), mega.master_key)
    return seconds, f"https://mega.nz/file/{public}#{a32_to_base64(key)}"
