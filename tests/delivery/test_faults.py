"""Delivery under adversity: hostile subscribers, trimmed and lost state, lost replies,
quiet streams and operators taking events over. Real Redis, real HTTP on loopback."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from notifier.core.health import Health
from notifier.service.delivery import CONSUMER, SubscriberWorker, supervise
from notifier.store.delivery import DeliveryStore
from notifier.store.keys import Keys
from notifier.store.redis import Store
from tests.conftest import Namespace
from tests.delivery.test_worker import SECRET, _count, _zero_pending, publish, running, sub
from tests.integration.daemon import wait_until
from tests.proxy import RedisProxy
from tests.receiver import Received, Receiver, Reply


class Statuses:
    """Answers each webhook-id ``fail`` times with 500, then 200; counts the 2xx per id."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.ok: Counter[str] = Counter()

    def __call__(self, r: Received, n: int) -> Reply:
        if n < self.fail:
            return Reply(500, hang=0.002)
        self.ok[r.webhook_id] += 1
        return Reply(200, hang=0.002)

    def duplicates(self) -> dict[str, int]:
        return {k: v for k, v in self.ok.items() if v > 1}


@pytest.mark.parametrize("fail", [1, 2])
async def test_no_successful_duplicate_without_a_crash(
        store: Store, redis_proxy: RedisProxy, fail: int) -> None:
    """Issue 10.1: the retrier read the due list before the ack batch landed, and checked
    it against the acks in flight after they had landed. A Redis that answers the due
    list's query 30 ms late (the proxy) makes that window wide enough to hit every run."""
    redis_proxy.slow = {b"ZRANGEBYSCORE": 0.03}
    client = redis_proxy.client()
    behave = Statuses(fail)
    try:
        with Receiver(behave) as rx:
            ids = await publish(store, 150)
            async with running(Store(client, store.keys, store.stream),
                               sub("crm", rx.url, retry_schedule=[0.05] * 3, max_in_flight=8)):
                await wait_until(lambda: _all_ok(behave, ids), 30, "every event answered 2xx")
                await wait_until(lambda: _zero_pending(store, "crm"), 10, "the acks")
                await anyio.sleep(0.5)  # a late duplicate would arrive now
    finally:
        await client.aclose()
    assert behave.duplicates() == {}
    assert len(rx.received) == len(ids) * (fail + 1)


async def test_acks_an_outage_kept_from_redis_are_not_sent_again(
        store: Store, redis_proxy: RedisProxy) -> None:
    """Found by the fault campaign (seed 4, ``redis.down``): Redis went away just as a
    batch of acks was flushed; the worker restarted without them and sent those events
    again from the pending list, with no crash to excuse it."""
    client = redis_proxy.client()
    behave = Statuses(0)
    try:
        with Receiver(behave) as rx:
            ids = await publish(store, 5)
            redis_proxy.down_on(b"XACK", 3.0)
            cfg = sub("crm", rx.url)
            s = Store(client, store.keys, store.stream)
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervise,
                              lambda: SubscriberWorker(client, store.keys, s, cfg), "crm")
                await wait_until(lambda: _all_ok(behave, ids), 20, "every event answered 2xx")
                await wait_until(lambda: _zero_pending(store, "crm"), 20, "the acks")
                await anyio.sleep(0.5)  # a duplicate would arrive now
                tg.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert redis_proxy.cuts == 1
    assert behave.duplicates() == {}
    assert len(rx.received) == len(ids)


async def _all_ok(behave: Statuses, ids: list[str]) -> bool:
    return set(behave.ok) >= set(ids)


async def test_disabled_subscriber_is_paused_not_stalled(store: Store) -> None:
    """Issue 10.3: a disabled subscriber's loop stops beating; that is no wedge."""
    health = Health()
    with Receiver(lambda r, n: Reply(410)) as rx:
        await publish(store, 2)
        w = SubscriberWorker(store.redis, store.keys, store, sub("crm", rx.url),
                             health=health)
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await wait_until(lambda: _disabled(store, "crm"), 10, "the 410 to disable it")
            await anyio.sleep(1.0)  # the reader sees it and waits
            later = time.time() + 10_000  # long past any promise
            assert health.stalled(later) == []
            assert await _paused(health)
            report = health.report(later)
            assert report["ok"] is True and report["disabled"] == ["subscriber/crm"]
            tg.cancel_scope.cancel()


async def _disabled(store: Store, name: str) -> bool:
    return await store.redis.hget(store.keys.sub(name, "state"), "disabled") == b"1"


async def _state(store: Store, name: str, field: str) -> str | None:
    raw = await store.redis.hget(store.keys.sub(name, "state"), field)
    return None if raw is None else raw.decode()


async def _paused(health: Health) -> bool:
    return health.paused("disabled") == ["subscriber/crm"]


async def test_a_lost_group_is_recreated_from_the_oldest_entry_at_restart(
        store: Store) -> None:
    """Issue 10.4: ``run()`` recreated a lost group at ``$`` (start = now)."""
    with Receiver() as rx:
        async with running(store, sub("crm", rx.url, start="now")):
            await anyio.sleep(0.3)
            await publish(store, 1)
            await wait_until(lambda: _count(rx, 1), 10, "the first delivery")
            await wait_until(lambda: _zero_pending(store, "crm"), 5, "its ack")
        await store.redis.xgroup_destroy(store.stream, "crm")
        missed = await publish(store, 3, start=10)  # appended while the group is missing
        async with running(store, sub("crm", rx.url, start="now")):
            await wait_until(lambda: _count(rx, 5), 10, "the events appended meanwhile")
            await wait_until(lambda: _zero_pending(store, "crm"), 5, "their acks")
    # Recreated from the oldest entry: the first event again (at-least-once), then the rest.
    assert rx.ids()[2:] == missed
    assert await _state(store, "crm", "group_lost_count") == "1"


async def test_a_new_subscriber_still_starts_now(store: Store) -> None:
    with Receiver() as rx:
        await publish(store, 3)
        async with running(store, sub("fresh", rx.url, start="now")):
            await anyio.sleep(0.3)
        assert rx.received == []
        state = await DeliveryStore(store.redis, store.keys, store.stream, "fresh").state()
        assert state.group_created_at is not None and state.group_lost_count == 0


async def test_trimmed_pending_entries_are_never_sent_and_counted_lost_once(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10.5: redis-py 8 returns ``{}`` for a pending entry trimmed from the stream."""
    await store.redis.xgroup_create(store.stream, "crm", id="0", mkstream=True)
    await publish(store, 150)
    # The subscriber read them and failed (they wait for retries), then was disabled
    # longer than retention: retention trimmed them from the stream.
    read: Any = await store.redis.xreadgroup("crm", CONSUMER, {store.stream: ">"}, count=200)
    for entry_id, _ in read[0][1][:30]:
        await store.redis.zadd(store.keys.sub("crm", "retry"), {entry_id: time.time()})
        await store.redis.hset(store.keys.sub("crm", "tries"), entry_id, "1")
    await store.redis.xtrim(store.stream, maxlen=0)
    fresh = await publish(store, 2, start=500)
    caplog.set_level(logging.ERROR, "notifier.delivery")
    with Receiver() as rx:
        async with running(store, sub("crm", rx.url)):
            await wait_until(lambda: _count(rx, 2), 10, "the fresh events")
            await wait_until(lambda: _zero_pending(store, "crm"), 5, "every ack")
            await anyio.sleep(1.2)  # the retrier has looked at the due retries
    assert rx.ids() == fresh  # nothing empty was ever POSTed
    assert all(r.body and r.webhook_id for r in rx.received)
    assert await _state(store, "crm", "lost_count") == "150"
    assert await store.redis.zcard(store.keys.sub("crm", "retry")) == 0
    lines = [r for r in caplog.records if "trimmed" in r.getMessage()]
    assert len(lines) == 1 and "150 events" in lines[0].getMessage()
    # ... and `status` says so.
    from io import StringIO

    from notifier import config
    from notifier.service import status

    settings = config.parse({
        "redis": {"url": "redis://127.0.0.1:6379/0", "prefix": store.keys.prefix,
                  "stream": store.stream},
        "subscribers": [{"name": "crm", "url": "https://crm.example.com/h", "secret": SECRET}]})
    data = await status.collect(settings, store.redis, time.time())
    assert data["subscribers"][0]["lost"] == 150
    out = StringIO()
    status.render(data, out)
    assert "150 events lost: trimmed from the stream before delivery" in out.getvalue()


async def test_dead_letter_is_written_once_when_its_reply_is_lost(
        store: Store, redis_proxy: RedisProxy) -> None:
    """Issue 10.6: redis-py retries a transaction whose reply was lost."""
    await publish(store, 2)
    await store.redis.xgroup_create(store.stream, "crm", id="0", mkstream=True)
    read: Any = await store.redis.xreadgroup("crm", CONSUMER, {store.stream: ">"}, count=2)
    (first, f1), (second, f2) = [(i.decode(), {k.decode(): v for k, v in f.items()})
                                 for i, f in read[0][1]]
    client = redis_proxy.client()
    try:
        pdb = DeliveryStore(client, store.keys, store.stream, "crm")
        await pdb.dead_letter(first, f1, "HTTP 400", 3, time.time())  # loads any script
        redis_proxy.arm([b"EVALSHA", b"EXEC"])
        await pdb.dead_letter(second, f2, "HTTP 400", 3, time.time())
        assert redis_proxy.dropped == 1, "the proxy did not cut the reply"
    finally:
        await client.aclose()
    dead: Any = await store.redis.xrange(store.keys.sub("crm", "dead"))
    assert [f[b"entry"].decode() for _, f in dead] == [first, second]
    assert await _zero_pending(store, "crm")


async def test_delivery_survives_a_quiet_stream_longer_than_the_socket_timeout(
        redis_url: str, ns: Namespace) -> None:
    """Issue 12.1: a blocking read must block for less than the client's socket timeout."""
    client = Redis.from_url(redis_url, socket_timeout=0.5)
    store = Store(client, Keys(ns.prefix), ns.stream)
    try:
        with Receiver() as rx:
            w = SubscriberWorker(client, store.keys, store, sub("crm", rx.url))
            failed: list[BaseException] = []

            async def run() -> None:
                try:
                    await w.run()
                except BaseException as exc:
                    failed.append(exc)
                    raise

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await anyio.sleep(1.5)  # quiet: three socket timeouts long
                await publish(store, 1)
                await wait_until(lambda: _count(rx, 1), 5, "delivery after the quiet time")
                tg.cancel_scope.cancel()
            assert not [e for e in failed if not isinstance(e, anyio.get_cancelled_exc_class())]
    finally:
        await client.aclose()


async def test_redeliver_by_id_takes_over_the_pending_retry(
        store: Store, redis_url: str, ns: Namespace) -> None:
    """Issue 12.7: the retry scheduled before ``redeliver --id`` fired later anyway."""
    from io import StringIO

    from notifier import config
    from notifier.service import admin

    with Receiver(lambda r, n: Reply(500 if n == 0 else 200)) as rx:
        (eid,) = await publish(store, 1)
        cfg = sub("crm", rx.url, retry_schedule=[1.5])
        async with running(store, cfg):
            await wait_until(lambda: _count(rx, 1), 10, "the first, failed attempt")
            await wait_until(lambda: _scheduled(store), 5, "its retry to be scheduled")
            settings = config.parse({
                "redis": {"url": redis_url, "prefix": ns.prefix, "stream": ns.stream},
                "subscribers": [{**cfg.model_dump(exclude_none=True), "secret": SECRET}]})
            out = StringIO()
            assert await admin.redeliver(settings, "crm", out, event_id=eid), out.getvalue()
            await anyio.sleep(2.5)  # past the retry's due time
            assert rx.ids() == [eid, eid]  # the failure and the redelivery, no retry
            assert await _zero_pending(store, "crm")
            assert not await _scheduled(store)


async def _scheduled(store: Store) -> bool:
    return await store.redis.zcard(store.keys.sub("crm", "retry")) == 1


async def test_a_subscriber_disabled_for_410_never_gets_its_own_notice(store: Store) -> None:
    """Issue 12.8."""
    gone = True
    with Receiver(lambda r, n: Reply(410 if gone else 200)) as rx, Receiver() as other:
        ids = await publish(store, 2)
        async with running(store, sub("crm", rx.url), sub("ops", other.url)):
            await wait_until(lambda: _disabled(store, "crm"), 10, "the 410 to disable it")
            gone = False
            # what `subscriber enable` does
            await store.redis.hdel(store.keys.sub("crm", "state"), "disabled", "failing_since")
            await wait_until(lambda: _zero_pending(store, "crm"), 10, "delivery after enable")
            await wait_until(lambda: _zero_pending(store, "ops"), 10, "the other's delivery")
    notices = [json.loads(r.body) for r in other.received
               if json.loads(r.body)["type"] == "notifier.subscriber.disabled"]
    assert len(notices) == 1 and notices[0]["data"]["subscriber"] == "crm"
    types = {json.loads(r.body)["type"] for r in rx.received}
    assert types == {"patient.updated"} and set(rx.ids()) == set(ids)
