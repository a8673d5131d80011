"""Issue 10.2: ``timeout`` bounds a whole attempt, connect to last byte, against receivers
that trickle their reply; and the HTTP pool stays whole after thousands of such
cancelled attempts (encode/httpcore #1093)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from notifier.delivery.sender import Sender
from notifier.store.redis import Store
from tests.delivery.test_worker import SECRET, _zero_pending, publish, running, sub
from tests.integration.daemon import wait_until

TIMED_OUT = "timed out (no complete reply within {:g}s)"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n"


class Trickler:
    """An HTTP server on loopback that answers ``mode``: ``headers`` (the status line and
    headers one byte at a time), ``body`` (headers at once, then the body one byte at a
    time), ``fast`` (at once), ``mixed`` (every other request trickles its headers)."""

    def __init__(self, mode: str, gap: float = 0.05, total: float = 4.0) -> None:
        self.mode, self.gap, self.total = mode, gap, total
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Trickler:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                mode = self.mode
                if mode == "mixed":
                    mode = "headers" if self.requests % 2 else "fast"
                if mode == "fast":
                    writer.write(HEAD + b"{}")
                    await writer.drain()
                    continue
                reply = HEAD + b"{}" if mode == "headers" else b""
                if mode == "body":
                    writer.write(HEAD.replace(b"Length: 2", b"Length: 100000"))
                    reply = b" " * 100000
                started = time.monotonic()
                for i in range(len(reply)):
                    if time.monotonic() - started > self.total:
                        break
                    writer.write(reply[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(self.gap)
                writer.close()
                return

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def trickler(mode: str, **kw: Any) -> AsyncIterator[Trickler]:
    t = await Trickler(mode, **kw).start()
    try:
        yield t
    finally:
        await t.stop()


@pytest.mark.parametrize("mode", ["headers", "body"])
async def test_a_trickling_reply_is_cut_at_the_timeout(mode: str) -> None:
    async with trickler(mode) as t:
        sender = Sender(t.url, [SECRET], timeout=0.5, max_in_flight=2, allow_private=True)
        try:
            started = time.monotonic()
            attempt = await sender.send("evt_1", b"{}")
            took = time.monotonic() - started
        finally:
            await sender.aclose()
    assert attempt.status is None and "timed out" in attempt.error
    assert took < 1.0, f"the attempt took {took:.1f}s with a 0.5s timeout"


async def test_a_trickling_subscriber_keeps_its_slots_turning(store: Store) -> None:
    """Every slot held by a trickling reply used to stop the subscriber's worker."""
    async with trickler("headers", gap=0.2, total=30) as t:
        ids = await publish(store, 6)
        async with running(store, sub("drip", t.url, timeout=0.3, max_in_flight=2,
                                      retry_schedule=[])):
            started = time.monotonic()
            await wait_until(lambda: _zero_pending(store, "drip"), 10, "every attempt over")
            took = time.monotonic() - started
    dead = await store.redis.xlen(store.keys.sub("drip", "dead"))
    assert dead == len(ids) and t.requests == len(ids)
    assert took < 3.0  # 3 rounds of 2 slots at 0.3 s, not 6 attempts held for 30 s


async def _soak(attempts: int, in_flight: int, timeout: float = 0.05) -> None:
    """``attempts`` attempts, ``in_flight`` at a time as the worker runs them, against a
    receiver whose every other reply trickles past the timeout; then the pool must serve a
    full set of concurrent attempts at once, with no connection left behind."""
    async with trickler("mixed", gap=0.02, total=1.0) as mixed, trickler("fast") as fast:
        sender = Sender(mixed.url, [SECRET], timeout=timeout, max_in_flight=in_flight,
                        allow_private=True)
        slots = anyio.Semaphore(in_flight)
        outcomes: list[str] = []

        async def one(url_sender: Sender) -> None:
            async with slots:
                a = await url_sender.send("evt_x", b"{}")
                outcomes.append("ok" if a.status == 200 else a.error)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(attempts):
                    tg.start_soon(one, sender)
            assert outcomes.count("ok") >= attempts // 50  # fast replies among the drips
            assert outcomes.count("ok") + outcomes.count(TIMED_OUT.format(timeout)) \
                == attempts
            # No request left in the pool, and no connection that no request owns but is
            # neither idle nor closed: the orphans of encode/httpcore #1093.
            pool: Any = sender.client._transport._pool  # type: ignore[attr-defined]
            assert not pool._requests
            assert len(pool.connections) <= in_flight
            orphans = [c for c in pool.connections if not (c.is_idle() or c.is_closed())]
            assert orphans == []
            # The same client, now pointed at a fast receiver: every slot serves at once.
            sender.url = fast.url
            sender.timeout = 5.0  # a loaded machine may take more than 50 ms to answer
            sender.client.timeout = httpx.Timeout(5.0)
            outcomes.clear()
            async with anyio.create_task_group() as tg:
                for _ in range(in_flight * 4):
                    tg.start_soon(one, sender)
            assert outcomes == ["ok"] * in_flight * 4
            assert not pool._requests
            assert all(c.is_idle() or c.is_closed() for c in pool.connections)
        finally:
            await sender.aclose()


async def test_the_pool_recovers_after_many_cancelled_attempts() -> None:
    await _soak(400, 4)


@pytest.mark.slow
async def test_soak_the_pool_with_thousands_of_cancelled_attempts() -> None:
    for attempts, in_flight in ((500, 1), (3000, 8), (5000, 32)):
        await _soak(attempts, in_flight, timeout=0.2)
