"""The MEGA emulator behind a shaping proxy: every connection to it behaves like one TCP
connection over a wide-area link, with a bandwidth cap and a delay.

    python -m benchmarks.wan --account EMAIL:PASSWORD --data-dir DIR \
        [--mb-s 4] [--one-way-ms 20] [--seed 1]

Runs in one process: the emulator (``tests.mega_emulator``) on a loopback port of its
own, and the proxy in front of it on another, 127.0.0.1 only. The emulator advertises
the proxy's address, so upload URLs from ``u`` (and download URLs from ``g``) lead
through the proxy as well. Prints the proxy's base URL once both accept connections,
like ``python -m tests.mega_emulator`` prints its own, and serves until SIGTERM/SIGINT.

The model, per TCP connection accepted:
- client -> emulator (request bodies: the upload direction): at most ``mb_s`` MB/s, each
  piece arriving ``one_way_ms`` after it has crossed the link;
- emulator -> client (answers): ``one_way_ms`` later, not capped (answers are small).
A client that opens several connections gets the cap on each, as on a real path where
one TCP connection is held back by its window and the round trip; MEGA's own clients
upload over several connections for that reason. Slow start and loss are not modelled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
from pathlib import Path

from tests.mega_emulator.server import MegaEmulator

PIECE = 64 * 1024  # bytes the proxy moves at a time: 16 ms at 4 MB/s


class AdvertisedEmulator(MegaEmulator):
    """The emulator, answering with another address (the proxy's) in the URLs it hands out."""

    def __init__(self, *args: object, advertised: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.advertised = advertised

    @property
    def url(self) -> str:
        return self.advertised


async def _pump(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    delay_s: float,
    bytes_per_s: float | None,
) -> None:
    """Copy one direction: each piece is paced by the link's rate (the reader waits while
    the piece crosses, so the sender's socket fills and it is held back) and delivered
    ``delay_s`` after it has crossed."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                with contextlib.suppress(OSError):
                    if sink.can_write_eof():
                        sink.write_eof()
                return
            sink.write(data)
            await sink.drain()

    delivering = asyncio.create_task(deliver())
    link_free = loop.time()
    try:
        while data := await source.read(PIECE):
            now = loop.time()
            if bytes_per_s:
                link_free = max(link_free, now) + len(data) / bytes_per_s
                queue.put_nowait((link_free + delay_s, data))
                await asyncio.sleep(max(0.0, link_free - loop.time()))
            else:
                queue.put_nowait((now + delay_s, data))
        queue.put_nowait((max(link_free, loop.time()) + delay_s, None))
        await delivering
    finally:
        delivering.cancel()


class ShapingProxy:
    """An asyncio TCP proxy on 127.0.0.1 in front of ``upstream_port``."""

    def __init__(self, listener: socket.socket, upstream_port: int, mb_s: float, one_way_ms: float):
        self.listener = listener
        self.upstream_port = upstream_port
        self.bytes_per_s = mb_s * 1e6
        self.delay_s = one_way_ms / 1000
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="wan-proxy", daemon=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                _pump(reader, up_writer, self.delay_s, self.bytes_per_s),
                _pump(up_reader, writer, self.delay_s, None),
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for side in (writer, up_writer):
                side.close()

    def start(self) -> None:
        async def serve() -> None:
            await asyncio.start_server(self._connection, sock=self.listener)

        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(timeout=10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--account", required=True, metavar="EMAIL:PASSWORD")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--mb-s", type=float, default=4.0, help="per-connection upload cap")
    parser.add_argument("--one-way-ms", type=float, default=20.0, help="delay each way")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    proxy_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    emulator = AdvertisedEmulator(args.data_dir, seed=args.seed, advertised=proxy_url)
    email, _, password = args.account.partition(":")
    emulator.add_account(email, password)
    emulator.start()
    proxy = ShapingProxy(listener, emulator.port, args.mb_s, args.one_way_ms)
    proxy.start()

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(proxy_url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        proxy.stop()
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
