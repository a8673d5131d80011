"""A TCP proxy to Redis on loopback, for the faults a real network has: a reply lost after
the server applied the command, and an outage (every connection cut, new ones refused)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from redis.asyncio import Redis


class RedisProxy:
    """Forwards 127.0.0.1:<port> to Redis.

    ``arm(markers)``: the next client packet containing one of ``markers`` (say
    ``b"EVALSHA"``) reaches the server, and then the connection is cut before the reply
    gets back: the lost-reply case. ``cut()``: an outage, every connection closed and new
    ones refused until ``restore()``.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.markers: tuple[bytes, ...] = ()
        self.latency = 0.0  # seconds added to every reply (a slow or distant Redis)
        # seconds added to the reply of a command containing one of these markers
        self.slow: dict[bytes, float] = {}
        self.dropped = 0
        self.listen_port = 0
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def armed(self) -> bool:
        return bool(self.markers)

    def arm(self, markers: Sequence[bytes] = (b"EVALSHA",)) -> None:
        self.markers = tuple(m.upper() for m in markers)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port,
                                                 reuse_address=True)
        self.listen_port = int(self.server.sockets[0].getsockname()[1])
        return self.listen_port

    def client(self) -> Redis:
        """A client through the proxy, with redis-py's default retry (which
        ``Redis.from_url`` does not set up)."""
        return Redis(host="127.0.0.1", port=self.listen_port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listen_port}/0"

    async def cut(self) -> None:
        """Redis goes away: the listener closes and every connection is dropped."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def restore(self) -> None:
        """Redis answers again, on the same port."""
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_w))
        cut = asyncio.Event()
        hold = [0.0]

        async def upstream() -> None:
            while data := await reader.read(65536):
                for marker, delay in self.slow.items():
                    if marker in data.upper():
                        hold[0] = delay
                if self.markers and any(m in data.upper() for m in self.markers):
                    self.markers = ()
                    cut.set()
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def downstream() -> None:
            while data := await up_r.read(65536):
                if cut.is_set():
                    self.dropped += 1
                    break
                if self.latency or hold[0]:
                    delay, hold[0] = self.latency + hold[0], 0.0
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
            writer.close()
            up_w.close()

        try:
            await asyncio.gather(upstream(), downstream(), return_exceptions=True)
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_w)
            with contextlib.suppress(Exception):
                writer.close()
                up_w.close()

    async def stop(self) -> None:
        await self.cut()
