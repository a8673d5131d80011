"""The Redis adapter against a real server: atomic, idempotent page commits."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from notifier.config import RedisConfig
from notifier.core.cursor import Progress, Window
from notifier.core.derive import derive
from notifier.events import canonical, derived_event, record_event
from notifier.store.keys import Keys
from notifier.store.redis import DictionaryConflict, Store
from tests.conftest import Namespace
from tests.proxy import DropReplyProxy

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


async def test_replayed_commit_applies_once(
        proxied: tuple[Store, DropReplyProxy], store: Store) -> None:
    """A commit delivered twice (a retrying client or proxy) applies once: the token."""
    pstore, proxy = proxied
    await pstore.commit("main", "invoices", progress=Progress(cursor=1))  # loads the script
    proxy.armed = proxy.replay = True
    big = events(300)   # a command longer than one read
    with contextlib.suppress(RedisConnectionError):  # this client retries; the daemon's does not
        await pstore.commit("main", "patients", progress=Progress(cursor=2), events=big)
    assert proxy.replayed == 1
    assert await store.redis.xlen(store.stream) == 300


async def test_stream_fields_cut_records_down_before_the_stream(
        redis: Redis, ns: Namespace) -> None:
    shape = RedisConfig(stream_fields={"patients": ["id", "updated_at"]}).stream_shape()
    store = Store(redis, Keys(ns.prefix), ns.stream, shape=shape)
    record = {"id": 1, "nhs_number": "485 777 3456", "updated_at": "2026-11-27T10:00:00Z"}
    created = record_event("main", "patients", "created", record, T)
    update = record_event("main", "patients", "updated", record, T,
                          {"nhs_number": [None, "485 777 3456"]})
    await store.commit("main", "patients", progress=None, snapshots={"1": b"whole"},
                       events=[created, update])
    entries = await redis.xrange(ns.stream)
    assert [f[b"id"].decode() for _, f in entries] == [created.id, update.id]
    for _, f in entries:
        assert b"nhs_number" not in f[b"payload"] and b"485 777" not in f[b"payload"]
    assert json.loads(entries[1][1][b"payload"])["data"]["changes"] == {}
    assert await store.snapshots("main", "patients", ["1"]) == [b"whole"]


async def test_stream_fields_cut_derived_events_too_never_keep_them_whole(
        redis: Redis, ns: Namespace) -> None:
    """A derived event whose rule reads only fields the stream drops (an email change ->
    patient.contact_changed, with stream_fields keeping no contact field) is cut like any
    other, not stored whole."""
    shape = RedisConfig(stream_fields={"patients": ["id", "updated_at"]}).stream_shape()
    store = Store(redis, Keys(ns.prefix), ns.stream, shape=shape)
    old = {"id": 1, "email_address": "a@example.com", "nhs_number": "485 777 3456",
           "active": True, "updated_at": "2026-11-27T10:00:00Z"}
    new = {**old, "email_address": "b@example.com", "active": False,
           "updated_at": "2026-11-27T10:01:00Z"}
    cause = record_event("main", "patients", "updated", new, T,
                         {"email_address": ["a@example.com", "b@example.com"],
                          "active": [True, False]})
    derived = [derived_event(cause, d, new, "2026-11-27T10:01:00.000000Z", canonical(new))
               for d in derive("patients", old, new)]
    assert {e.type for e in derived} >= {"patient.contact_changed", "patient.archived"}
    await store.commit("main", "patients", progress=None, snapshots={"1": b"whole"},
                       events=[cause, *derived])
    entries = await redis.xrange(ns.stream)
    assert [f[b"type"].decode() for _, f in entries] == [e.type for e in [cause, *derived]]
    for _, f in entries:
        body = f[b"payload"]
        for secret in (b"nhs_number", b"485 777", b"example.com"):
            assert secret not in body, (f[b"type"], body)
        assert set(json.loads(body)["data"]["record"]) <= {"id", "updated_at"}
