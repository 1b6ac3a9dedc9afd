"""Stock mega.py 1.0.8 ``Mega.upload`` against the emulator.

mega.py builds ``https://g.api.<domain>/cs`` itself; the only change is where
``_api_request`` posts (``<emulator>/cs``). Its body, parameters, answer handling and
retry-on-EAGAIN are copied from mega.py; ``upload`` itself is not touched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests
from mega import Mega
from mega.crypto import a32_to_base64, base64_to_a32, decrypt_key
from mega.errors import RequestError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential


class EmulatedMega(Mega):
    def __init__(self, api_url: str) -> None:
        super().__init__()
        self.api_url = api_url

    # mega.py's decorator, plus a stop so that a broken emulator cannot hang the run.
    @retry(
        retry=retry_if_exception_type(RuntimeError),
        wait=wait_exponential(multiplier=2, min=2, max=60),
        stop=stop_after_delay(120),
    )
    def _api_request(self, data: Any) -> Any:
        params: dict[str, Any] = {"id": self.sequence_num}
        self.sequence_num += 1
        if self.sid:
            params.update({"sid": self.sid})
        if not isinstance(data, list):
            data = [data]
        response = requests.post(
            f"{self.api_url}/cs", params=params, data=json.dumps(data), timeout=self.timeout
        )
        json_resp = json.loads(response.text)
        int_resp = None
        try:
            if isinstance(json_resp, list):
                int_resp = json_resp[0] if isinstance(json_resp[0], int) else None
            elif isinstance(json_resp, int):
                int_resp = json_resp
        except IndexError:
            int_resp = None
        if int_resp is not None:
            if int_resp == 0:
                return int_resp
            if int_resp == -3:
                raise RuntimeError("Request failed, retrying")
            raise RequestError(int_resp)
        return json_resp[0]


def logged_in(api_url: str, email: str, password: str) -> EmulatedMega:
    mega = EmulatedMega(api_url)
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
