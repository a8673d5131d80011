"""A TCP proxy to Redis for fault tests: a lost reply, a replayed command, a slow reply, or
every connection cut for a while.

``arm(markers)`` (or ``armed = True`` for EVALSHA): lets the next command containing a
marker reach the server, then cuts that connection before its reply gets back (the
lost-reply case redis-py retries). With ``replay`` the proxy also sends that same command
again on a new connection, as a retrying client or proxy would: what the commit token
exists for. ``slow``: the reply to a command containing a marker comes that many seconds
late (``latency``: every reply). ``down`` (or ``cut()`` / ``restore()``): every open
connection is cut and new ones are closed at once, until ``down`` is cleared (Redis
unreachable for a while); ``down_on(marker, seconds)``: that, just before a command
reaches Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from redis.asyncio import Redis


class RedisProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.markers: tuple[bytes, ...] = ()
        self.replay = False
        self.replayed = 0
        self.dropped = 0
        self.cuts = 0
        self.latency = 0.0
        self.slow: dict[bytes, float] = {}
        self.listen_port = 0
        self.server: asyncio.Server | None = None
        self._down = False
        self._open: set[asyncio.StreamWriter] = set()
        self._down_on: tuple[bytes, float] | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = int(self.server.sockets[0].getsockname()[1])
        return self.listen_port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listen_port}/0"

    def client(self) -> Redis:
        """A client through the proxy with redis-py's default retry (which
        ``Redis.from_url`` does not set up)."""
        return Redis(host="127.0.0.1", port=self.listen_port)

    @property
    def armed(self) -> bool:
        return bool(self.markers)

    @armed.setter
    def armed(self, value: bool) -> None:
        self.markers = (b"EVALSHA",) if value else ()

    def arm(self, markers: Sequence[bytes] = (b"EVALSHA",)) -> None:
        self.markers = tuple(m.upper() for m in markers)

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value:
            self.cuts += 1
            for w in list(self._open):
                w.close()

    def down_on(self, marker: bytes, seconds: float) -> None:
        """Redis goes away just before the next command containing ``marker`` reaches it
        (that command is never applied), for ``seconds``."""
        self._down_on = (marker.upper(), seconds)

    async def cut(self) -> None:
        """Redis goes away: every connection is dropped, new ones are closed at once."""
        self.down = True

    async def restore(self) -> None:
        """Redis answers again."""
        self.down = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        if self._down:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._open.update((writer, up_w))
        cut = asyncio.Event()
        hold = [0.0]

        async def upstream() -> None:
            while data := await reader.read(65536):
                upper = data.upper()
                if self._down_on is not None and self._down_on[0] in upper:
                    seconds, self._down_on = self._down_on[1], None
                    self.down = True
                    asyncio.get_running_loop().call_later(seconds, setattr, self, "down",
                                                          False)
                    return
                for marker, delay in self.slow.items():
                    if marker in upper:
                        hold[0] = delay
                if self.markers and any(m in upper for m in self.markers):
                    self.markers = ()
                    if self.replay:
                        # The whole command, however many reads it takes.
                        while (end := command_end(data)) is None:
                            more = await reader.read(65536)
                            if not more:
                                return
                            data += more
                        cut.set()
                        up_w.write(data[:end])
                        await up_w.drain()
                        await self._send_again(data[:end])
                        return
                    cut.set()
                up_w.write(data)
                await up_w.drain()

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
            self._open.difference_update((writer, up_w))
            for w in (writer, up_w):
                with contextlib.suppress(Exception):
                    w.close()

    async def _send_again(self, command: bytes) -> None:
        r, w = await asyncio.open_connection(self.host, self.port)
        try:
            w.write(command)
            await w.drain()
            await r.read(65536)
            self.replayed += 1
        finally:
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._open):
            w.close()


DropReplyProxy = RedisProxy  # the name the fault campaign uses


def command_end(buf: bytes) -> int | None:
    """Where the first RESP command in ``buf`` ends (``*N`` then N bulk strings), or None
    if it is not complete yet."""
    try:
        if not buf.startswith(b"*"):
            return None
        eol = buf.index(b"\r\n")
        n, pos = int(buf[1:eol]), eol + 2
        for _ in range(n):
            eol = buf.index(b"\r\n", pos)
            size = int(buf[pos + 1:eol])
            pos = eol + 2 + size + 2
            if pos > len(buf):
                return None
        return pos
    except ValueError:
        return None
