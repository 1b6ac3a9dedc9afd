"""Stock mega.py pointed at an emulator: the one place that does it.

mega.py builds ``https://g.api.<domain>/cs`` itself, so the only change is where
``_api_request`` posts. The body, parameters and answer handling are mega.py's own;
its endless retry of EAGAIN (-3) becomes a bounded one. Everything else (log-in,
``upload``, ``download_url`` and its MAC check) runs unmodified.
"""

from __future__ import annotations

import json
from typing import Any

import requests
from mega import Mega
from mega.errors import RequestError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)


class EmulatedMega(Mega):
    def __init__(
        self,
        api_url: str,
        *,
        timeout: float = 30,
        eagain_attempts: int = 5,
        eagain_wait_s: float = 0.05,
        eagain_deadline_s: float = 120,
    ) -> None:
        super().__init__()
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._retrying = Retrying(
            retry=retry_if_exception_type(RuntimeError),
            wait=wait_exponential(multiplier=eagain_wait_s, max=60),
            stop=stop_after_attempt(eagain_attempts) | stop_after_delay(eagain_deadline_s),
            reraise=True,
        )

    def _api_request(self, data: Any) -> Any:
        return self._retrying(self._request_once, data)

    def _request_once(self, data: Any) -> Any:
        params: dict[str, Any] = {"id": self.sequence_num}
        self.sequence_num += 1
        if self.sid:
            params["sid"] = self.sid
        if not isinstance(data, list):
            data = [data]
        response = requests.post(
            f"{self.api_url}/cs", params=params, data=json.dumps(data), timeout=self.timeout
        )
        json_resp = json.loads(response.text)
        int_resp = None
        if isinstance(json_resp, list):
            int_resp = json_resp[0] if json_resp and isinstance(json_resp[0], int) else None
        elif isinstance(json_resp, int):
            int_resp = json_resp
        if int_resp is not None:
            if int_resp == 0:
                return int_resp
            if int_resp == -3:
                raise RuntimeError("Request failed, retrying")  # mega.py's own signal
            raise RequestError(int_resp)
        return json_resp[0]
