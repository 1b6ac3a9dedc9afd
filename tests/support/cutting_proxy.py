"""A TCP proxy on 127.0.0.1 that can cut a connection mid-request, the way a dropped
network does: clients go through it to a server process, and once ``cut_after`` is armed
it closes both sides as soon as that many more bytes went from client to server.
``up_rate`` (bytes per second, None: no limit) makes it a slow uplink."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.support.closing import ClosedOnExit

_PIECE = 64 * 1024
_IO_TIMEOUT_S = 60.0


class CuttingProxy(ClosedOnExit):
    """Forwards every connection to ``127.0.0.1:target_port``; ``url`` is its address."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._budget: int | None = None  # bytes client->server left before the cut
        self._open: list[socket.socket] = []
        self._closing = threading.Event()
        self.sent_up = 0  # bytes forwarded client -> server, in all
        self.up_rate: float | None = None
        self.cuts = 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def cut_after(self, size: int) -> None:
        """Cut the connection that carries the ``size``-th byte from now on."""
        with self._lock:
            self._budget = size

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(_IO_TIMEOUT_S)
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upward: bool) -> None:
        try:
            while data := source.recv(_PIECE):
                if upward:
                    with self._lock:
                        if self._budget is not None and len(data) >= self._budget:
                            data, cut = data[: self._budget], True
                            self._budget = None
                        else:
                            if self._budget is not None:
                                self._budget -= len(data)
                            cut = False
                        self.sent_up += len(data)
                    target.sendall(data)
                    if self.up_rate:
                        time.sleep(len(data) / self.up_rate)
                    if cut:
                        self.cuts += 1
                        break
                else:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            # Both directions at once, as a lost network looks to both ends.
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.close()
