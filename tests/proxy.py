"""A TCP proxy to Redis for fault tests: cut the reply of one script call, or every
connection for a while.

``armed``: lets the next EVALSHA reach the server, then cuts that connection before its reply
gets back (the lost-reply case redis-py retries). With ``replay`` the proxy also sends that
same command again on a new connection, as a retrying client or proxy would: what the commit
token exists for. ``down``: every open connection is cut and new ones are closed at once,
until ``down`` is cleared (Redis unreachable for a while).
"""

from __future__ import annotations

import asyncio
import contextlib


class DropReplyProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.armed = False
        self.replay = False
        self.replayed = 0
        self.dropped = 0
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self._down = False
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

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

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
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
        assert self.server is not None
        self.server.close()
        for w in list(self._open):
            w.close()


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
