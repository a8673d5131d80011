"""Webhook delivery against real HTTP receivers on loopback and a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from standardwebhooks.webhooks import Webhook

from notifier.config import SubscriberConfig
from notifier.events import record_event
from notifier.service.delivery import SubscriberWorker
from notifier.store.delivery import DeliveryStore
from notifier.store.redis import Store
from tests.integration.daemon import wait_until
from tests.receiver import Receiver, Reply

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = [0.05, 0.05, 0.05]


def sub(name: str, url: str, **kw: Any) -> SubscriberConfig:
    values: dict[str, Any] = {"name": name, "url": url, "secret": SECRET,
                              "allow_private": True, "start": "beginning",
                              "retry_schedule": FAST, **kw}
    return SubscriberConfig(**values)


async def publish(store: Store, n: int, resource: str = "patients", start: int = 0,
                  record: Callable[[int], int] = lambda i: i) -> list[str]:
    ids = []
    for i in range(start, start + n):
        e = record_event("main", resource, "updated",
                         {"id": record(i), "seq": i, "updated_at": "2026-11-27T10:00:00Z"},
                         datetime.now(UTC))
        await store.redis.xadd(store.stream, dict(e.stream_fields()))
        ids.append(e.id)
    return ids


@asynccontextmanager
async def running(store: Store, *subs: SubscriberConfig) -> AsyncIterator[list[SubscriberWorker]]:
    workers = [SubscriberWorker(store.redis, store.keys, store, s) for s in subs]
    async with anyio.create_task_group() as tg:
        for w in workers:
            tg.start_soon(w.run)
        yield workers
        tg.cancel_scope.cancel()


async def pending(redis: Redis, stream: str, group: str) -> int:
    info: Any = await redis.xpending(stream, group)
    return int(info["pending"])


async def test_signed_with_every_secret_and_verified_by_the_reference_library(
        store: Store) -> None:
    other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    with Receiver() as rx:
        ids = await publish(store, 3)
        async with running(store, sub("crm", rx.url, secret=None, secrets=[other, SECRET])):
            await wait_until(lambda: _count(rx, 3), 10, "3 deliveries")
            await wait_until(lambda: _zero_pending(store, "crm"), 5, "acks")
    assert rx.ids() == ids
    for r in rx.received:
        assert r.headers["content-type"] == "application/json"
        for secret in (SECRET, other):
            event = Webhook(secret).verify(r.body, r.headers)
            assert event["id"] == r.webhook_id and event["type"] == "patient.updated"


async def _count(rx: Receiver, n: int) -> bool:
    return len(rx.received) >= n


async def _zero_pending(store: Store, group: str) -> bool:
    try:
        return await pending(store.redis, store.stream, group) == 0
    except ResponseError:  # the worker has not created its group yet
        return False


async def test_filters_and_fan_out(store: Store) -> None:
    with Receiver() as a, Receiver() as b:
        pat = await publish(store, 2, "patients")
        app = await publish(store, 2, "appointments", start=10)
        async with running(store, sub("a", a.url, events=["patient.*"]),
                           sub("b", b.url)):
            await wait_until(lambda: _count(b, 4), 10, "fan-out")
            await wait_until(lambda: _zero_pending(store, "a"), 5, "a acks")
    assert a.ids() == pat and b.ids() == pat + app


async def test_new_subscriber_starts_now_by_default(store: Store) -> None:
    with Receiver() as rx:
        await publish(store, 3)
        async with running(store, sub("late", rx.url, start="now")):
            await anyio.sleep(0.3)
            fresh = await publish(store, 1, start=50)
            await wait_until(lambda: _count(rx, 1), 10, "the fresh event")
            await anyio.sleep(0.2)
    assert rx.ids() == fresh


async def test_failing_receiver_gets_the_same_webhook_id_until_it_succeeds(
        store: Store) -> None:
    with Receiver(lambda r, n: Reply(500 if n < 2 else 200)) as rx:
        (eid,) = await publish(store, 1)
        async with running(store, sub("crm", rx.url)):
            await wait_until(lambda: _count(rx, 3), 10, "three attempts")
            await wait_until(lambda: _zero_pending(store, "crm"), 5, "the ack")
    assert rx.ids() == [eid] * 3
    log = [json.loads(x) for x in await store.redis.lrange(store.keys.sub("crm", "log"), 0, -1)]
    assert [e["status"] for e in reversed(log)] == [500, 500, 200]
    assert [e["attempt"] for e in reversed(log)] == [1, 2, 3]


async def test_retry_after_is_honoured(store: Store) -> None:
    with Receiver(lambda r, n: Reply(429, {"retry-after": "1"}) if n == 0 else Reply()) as rx:
        await publish(store, 1)
        async with running(store, sub("crm", rx.url, retry_schedule=[0.01])):
            await wait_until(lambda: _count(rx, 2), 10, "the retry")
    gap = rx.received[1].at - rx.received[0].at
    assert 0.95 <= gap < 2.0


async def test_hanging_receiver_does_not_delay_another(store: Store) -> None:
    with Receiver(lambda r, n: Reply(hang=30)) as slow, Receiver() as fast:
        async with running(store, sub("slow", slow.url, timeout=20, max_in_flight=2),
                           sub("fast", fast.url)):
            await anyio.sleep(0.2)
            for i in range(10):
                sent = time.time()
                await publish(store, 1, start=i)
                await wait_until(lambda n=i + 1: _count(fast, n), 5, "fast delivery")
                assert fast.received[-1].at - sent < 1.0
    assert len(slow.received) == 2  # both in-flight slots stuck, nothing else harmed


async def test_410_disables_and_publishes_once(store: Store) -> None:
    gone = True
    with Receiver(lambda r, n: Reply(410 if gone else 200)) as rx:
        ids = await publish(store, 3)
        async with running(store, sub("crm", rx.url, events=["patient.*"])):
            db = DeliveryStore(store.redis, store.keys, store.stream, "crm")
            await wait_until(lambda: _disabled(db), 10, "disabling")
            await anyio.sleep(0.2)  # attempts already in flight finish
            attempts = len(rx.received)
            await anyio.sleep(1.0)
            assert len(rx.received) == attempts <= 3  # nothing new is sent while disabled
            raw = await store.redis.xrange(store.stream)
            notices = [json.loads(f[b"payload"]) for _, f in raw
                       if f[b"type"] == b"notifier.subscriber.disabled"]
            assert len(notices) == 1 and notices[0]["data"]["subscriber"] == "crm"
            assert "410" in notices[0]["data"]["reason"]
            gone = False
            await db.enable(time.time())  # what `subscriber enable` does
            await wait_until(lambda: _zero_pending(store, "crm"), 10, "delivery after enable")
    assert set(rx.ids()) == set(ids)


async def _disabled(db: DeliveryStore) -> bool:
    return await db.is_disabled()


async def test_disabled_after_failing_for_disable_after(store: Store) -> None:
    with Receiver(lambda r, n: Reply(503)) as rx:
        await publish(store, 1)
        async with running(store, sub("crm", rx.url, retry_schedule=[0.2] * 20,
                                      disable_after=0.5)):
            db = DeliveryStore(store.redis, store.keys, store.stream, "crm")
            await wait_until(lambda: _disabled(db), 10, "disabling")
    assert 2 <= len(rx.received) <= 6
    assert "every attempt failed" in ((await db.state()).disabled_reason or "")


async def test_dead_letter_after_the_schedule(store: Store) -> None:
    with Receiver(lambda r, n: Reply(400)) as rx:
        (eid,) = await publish(store, 1)
        async with running(store, sub("crm", rx.url, retry_schedule=[0.01, 0.01])):
            await wait_until(lambda: _count(rx, 3), 10, "three attempts")
            await wait_until(lambda: _zero_pending(store, "crm"), 5, "the dead letter")
    dead: Any = await store.redis.xrange(store.keys.sub("crm", "dead"))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"id"].decode() == eid and fields[b"error"] == b"HTTP 400"
    assert fields[b"attempts"] == b"3"


async def test_per_record_ordering_holds_under_failures(store: Store) -> None:
    def behave(r: Any, n: int) -> Reply:
        body = json.loads(r.body)
        first_of_a = body["data"]["record"]["seq"] == 0
        return Reply(500 if first_of_a and n < 2 else 200)

    with Receiver(behave) as rx:
        # seq 0..5 alternate between records 1 and 2; seq 0 (record 1) fails twice
        await publish(store, 6, record=lambda i: 1 + i % 2)
        async with running(store, sub("crm", rx.url, ordering="per_record",
                                      retry_schedule=[0.1, 0.1, 0.1])):
            await wait_until(lambda: _zero_pending(store, "crm"), 10, "all delivered")
    ok: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for r in rx.received:
        seen[r.webhook_id] = seen.get(r.webhook_id, 0) + 1
        record = json.loads(r.body)["data"]["record"]
        if not (record["seq"] == 0 and seen[r.webhook_id] <= 2):
            ok.append((str(record["id"]), record["seq"]))
    assert [s for rid, s in ok if rid == "1"] == [0, 2, 4]
    assert [s for rid, s in ok if rid == "2"] == [1, 3, 5]
    # record 2 was not held up behind record 1's retries
    order = [s for _, s in ok]
    assert order.index(1) < order.index(0)


async def test_lost_group_is_recreated_and_reported(store: Store) -> None:
    with Receiver() as rx:
        async with running(store, sub("crm", rx.url)):
            await publish(store, 1)
            await wait_until(lambda: _count(rx, 1), 10, "first delivery")
            await store.redis.xgroup_destroy(store.stream, "crm")
            await publish(store, 1, start=5)
            await wait_until(lambda: _count(rx, 2), 10, "delivery after the loss")
    state = await DeliveryStore(store.redis, store.keys, store.stream, "crm").state()
    assert state.group_lost_count == 1 and (state.group_lost_at or 0) > 0


async def test_max_per_second_caps_the_rate(store: Store) -> None:
    with Receiver() as rx:
        await publish(store, 12)
        async with running(store, sub("crm", rx.url, max_per_second=20)):
            await wait_until(lambda: _count(rx, 12), 10, "12 deliveries")
    span = rx.received[-1].at - rx.received[0].at
    # a bucket of 20 lets 20 through at once; 12 fit, so now a tighter cap:
    assert span < 1.0
    with Receiver() as rx2:
        await publish(store, 10, start=100)
        async with running(store, sub("slow", rx2.url, max_per_second=10, start="now")):
            await anyio.sleep(0.2)
            await publish(store, 20, start=200)
            await wait_until(lambda: _count(rx2, 20), 10, "20 deliveries")
    span = rx2.received[-1].at - rx2.received[0].at
    assert span >= 0.9  # 10 at once (the burst), the other 10 at 10 per second
