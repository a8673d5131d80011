"""The Redis adapter against a real server: atomic, idempotent page commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from notifier.core.cursor import Progress, Window
from notifier.events import record_event
from notifier.store.keys import Keys
from notifier.store.redis import DictionaryConflict, Store
from tests.conftest import Namespace

T = datetime(2026, 11, 27, tzinfo=UTC)


def events(n: int, start: int = 0) -> list:
    return [record_event("main", "patients", "created",
                         {"id": i, "updated_at": "2026-11-27T10:00:00.000Z"}, T)
            for i in range(start, start + n)]


async def test_commit_writes_everything_together(store: Store) -> None:
    p = Progress(cursor=5000, windows=(Window(5000, 9000), Window(9000, 12000)), page=3,
                 tries=1, count0=250, synced=True)
    evs = events(3)
    assert await store.commit("main", "patients", progress=p,
                              snapshots={"0": b"a", "1": b"b", "2": b"c"}, events=evs,
                              zdict=b"dict")
    assert await store.progress("main", "patients") == p
    assert await store.snapshots("main", "patients", ["0", "2", "9"]) == [b"a", b"c", None]
    entries = await store.redis.xrange(store.stream)
    assert [e[1][b"id"].decode() for e in entries] == [e.id for e in evs]
    assert set(entries[0][1]) == {b"id", b"type", b"practice", b"resource", b"record_id",
                                  b"payload"}
    assert await store.redis.get(store.keys.zdict("main", "patients")) == b"dict"
    # The dictionary is written once and never replaced; a commit whose snapshots need
    # another one writes nothing at all.
    with pytest.raises(DictionaryConflict):
        await store.commit("main", "patients", progress=Progress(cursor=9),
                           snapshots={"3": b"d"}, events=events(1), zdict=b"other")
    assert await store.redis.get(store.keys.zdict("main", "patients")) == b"dict"
    assert await store.progress("main", "patients") == p
    assert await store.snapshots("main", "patients", ["3"]) == [None]
    assert len(await store.redis.xrange(store.stream)) == 3


async def test_fresh_progress_is_empty(store: Store) -> None:
    assert await store.progress("main", "patients") == Progress()


class DropReplyProxy:
    """A TCP proxy to Redis that, when armed, lets the next EVALSHA reach the server and
    then cuts the connection before its reply gets back: the lost-reply case."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
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

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def proxied(redis_url: str, ns: Namespace) -> AsyncIterator[tuple[Store, DropReplyProxy]]:
    parts = urlsplit(redis_url)
    proxy = DropReplyProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    port = await proxy.start()
    client = Redis(host="127.0.0.1", port=port, db=int(parts.path.strip("/") or 0))
    yield Store(client, Keys(ns.prefix), ns.stream), proxy
    await client.aclose()
    await proxy.stop()


async def test_retry_after_lost_reply_publishes_once(
        proxied: tuple[Store, DropReplyProxy], store: Store) -> None:
    """redis-py retries a command whose connection died; the retry must not apply twice."""
    pstore, proxy = proxied
    await pstore.commit("main", "invoices", progress=Progress(cursor=1))  # loads the script
    proxy.armed = True
    applied = await pstore.commit("main", "patients", progress=Progress(cursor=2),
                                  events=events(5), snapshots={"1": b"x"})
    assert proxy.dropped == 1, "the proxy did not cut the reply"
    assert applied is False  # the retry found its own token: already applied
    assert await store.redis.xlen(store.stream) == 5
    assert (await store.progress("main", "patients")).cursor == 2


async def test_commit_to_wrong_type_fails_before_publishing(store: Store) -> None:
    await store.redis.set(store.keys.snapshots("main", "patients"), "not a hash")
    with pytest.raises(ResponseError):
        await store.commit("main", "patients", progress=Progress(cursor=9),
                           snapshots={"1": b"x"}, events=events(2))
    assert await store.redis.xlen(store.stream) == 0
    assert (await store.progress("main", "patients")).cursor is None
