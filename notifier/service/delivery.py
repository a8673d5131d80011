"""Delivers the event stream to one subscriber: filters, signing, retries, dead letters,
ordering, isolation and disabling.

Each subscriber has its own consumer group, HTTP pool, concurrency limit and tasks, so a
slow, hanging or failing one never delays another. An event is acknowledged in its group
only after a 2xx or when it is dead-lettered; until then it stays pending, and a restarted
daemon sends it again (at-least-once, same ``webhook-id``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from notifier.config import SubscriberConfig
from notifier.core.health import Health
from notifier.core.retry import Schedule, TokenBucket, verdict
from notifier.delivery.sender import Attempt, Sender
from notifier.events import notifier_event
from notifier.ops.metrics import Metrics
from notifier.store.delivery import DeliveryStore, Entry, is_nogroup
from notifier.store.keys import Keys
from notifier.store.redis import Store

log = logging.getLogger("notifier.delivery")

CONSUMER = "dentally-notifier"
FLUSH_DELAY = 0.005
READ_COUNT = 100
STATE_POLL = 1.0

RecordKey = tuple[bytes, bytes, bytes] | None


def matches(patterns: list[str], event_type: str) -> bool:
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


class SubscriberWorker:
    def __init__(self, redis: Redis, keys: Keys, store: Store, sub: SubscriberConfig, *,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random,
                 health: Health | None = None, metrics: Metrics | None = None) -> None:
        self.sub = sub
        self.store = store
        self.db = DeliveryStore(redis, keys, store.stream, sub.name)
        self.sender = Sender(sub.url, sub.secret_values(), timeout=sub.timeout,
                             max_in_flight=sub.max_in_flight, allow_private=sub.allow_private)
        self.schedule = Schedule(sub.retry_schedule)
        self.bucket = TokenBucket(sub.max_per_second) if sub.max_per_second else None
        self.slots = anyio.Semaphore(sub.max_in_flight)
        self.busy: dict[Any, deque[Entry]] = {}
        self.retrying: set[str] = set()
        self.disabled = False
        self.wake = anyio.Event()
        self._wall = wall
        self._rand = rand
        self._extra = {"subscriber": sub.name}
        self._acks: list[str] = []
        self._acking: set[str] = set()
        self._logs: list[str] = []
        self._flush_due = anyio.Event()
        self.health = health or Health()
        self.metrics = metrics
        self._beat = f"subscriber/{sub.name}"

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        created = await self.db.ensure_group(self.sub.start)
        if created:
            log.info("consumer group created (start = %s)", self.sub.start, extra=self._extra)
        self.disabled = (await self.db.state()).get("disabled") == "1"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_state)
                tg.start_soon(self._retrier, tg)
                tg.start_soon(self._flusher)
                await self._reader(tg)
        finally:
            self.health.forget(self._beat)
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await self._flush()
                await self.sender.aclose()

    async def _flusher(self) -> None:
        """Acks and attempt records go to Redis in batches: one round trip for many
        deliveries. An ack lost in a crash only means the event is sent again."""
        while True:
            await self._flush_due.wait()
            await anyio.sleep(FLUSH_DELAY)
            await self._flush()

    async def _flush(self) -> None:
        self._flush_due = anyio.Event()
        acks, logs = self._acks, self._logs
        if not acks and not logs:
            return
        self._acks, self._logs = [], []
        await self.db.flush(acks, logs, self._wall())
        self._acking.difference_update(acks)

    def _queue(self, ack: str | None, record: dict[str, Any]) -> None:
        if ack is not None:
            self._acks.append(ack)
            self._acking.add(ack)  # the retrier must not pick it up before the ack lands
        self._logs.append(json.dumps(record))
        self._flush_due.set()

    async def _watch_state(self) -> None:
        while True:
            await anyio.sleep(STATE_POLL)
            disabled = (await self.db.state()).get("disabled") == "1"
            if self.disabled and not disabled:
                log.info("re-enabled; delivering again", extra=self._extra)
                self.wake.set()
            self.disabled = disabled

    async def _wait_enabled(self) -> None:
        while self.disabled:  # noqa: ASYNC110 - the flag is flipped from Redis by the CLI
            await anyio.sleep(STATE_POLL / 4)

    # -- reading ------------------------------------------------------------------------
    async def _reader(self, tg: anyio.abc.TaskGroup) -> None:
        after = "0"
        while True:  # what this consumer held when the daemon last stopped
            entries = await self.db.read(CONSUMER, new=False, count=READ_COUNT, after=after)
            if not entries:
                break
            for entry in entries:
                after = entry[0]
                if await self.db.scheduled(entry[0]):
                    key = self._key(entry[1])
                    if key is not None:
                        self.busy.setdefault(key, deque())
                    continue
                await self._dispatch(tg, entry)
        while True:
            self.health.beat(self._beat, self._wall(), 90.0)
            await self._wait_enabled()
            try:
                entries = await self.db.read(CONSUMER, new=True, count=READ_COUNT,
                                             block_ms=1000)
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                await self._group_lost()
                continue
            for entry in entries:
                await self._dispatch(tg, entry)

    async def _group_lost(self) -> None:
        now = self._wall()
        await self.db.ensure_group("beginning")
        state = await self.db.state()
        count = int(state.get("group_lost_count", "0")) + 1
        await self.db.set_state(group_lost_at=str(now), group_lost_count=str(count))
        log.error("consumer group was lost (Redis restarted without persistence?); "
                  "recreated from the start of the retained stream: events may be sent "
                  "again, and events appended before the loss that were not delivered may "
                  "be gone with the stream", extra=self._extra)

    def _key(self, fields: dict[str, bytes]) -> RecordKey:
        if self.sub.ordering != "per_record" or not fields.get("record_id"):
            return None
        return (fields.get("practice", b""), fields.get("resource", b""), fields["record_id"])

    async def _dispatch(self, tg: anyio.abc.TaskGroup, entry: Entry) -> None:
        entry_id, fields = entry
        event_type = fields.get("type", b"").decode()
        if not matches(self.sub.events, event_type):
            await self.db.skip(entry_id)
            return
        key = self._key(fields)
        if key is not None:
            if key in self.busy:
                self.busy[key].append(entry)
                return
            self.busy[key] = deque()
        await self.slots.acquire()
        tg.start_soon(self._deliver, tg, entry, 0)

    def _release(self, tg: anyio.abc.TaskGroup, fields: dict[str, bytes]) -> None:
        key = self._key(fields)
        if key is None:
            return
        queue = self.busy.get(key)
        if queue:
            tg.start_soon(self._start_next, tg, queue.popleft())
        else:
            self.busy.pop(key, None)

    async def _start_next(self, tg: anyio.abc.TaskGroup, entry: Entry) -> None:
        await self.slots.acquire()
        await self._deliver(tg, entry, 0)

    # -- retries --------------------------------------------------------------------------
    async def _retrier(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await self._wait_enabled()
            now = self._wall()
            for entry_id in await self.db.due(now, READ_COUNT):
                if entry_id in self.retrying or entry_id in self._acking:
                    continue
                fields = await self.db.entry(entry_id)
                if fields is None:
                    log.error("event %s to retry is no longer in the stream", entry_id,
                              extra=self._extra)
                    await self.db.delivered(entry_id, now)
                    continue
                tries = await self.db.tries(entry_id)
                self.retrying.add(entry_id)
                await self.slots.acquire()
                tg.start_soon(self._deliver, tg, (entry_id, fields), tries)
            due = await self.db.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.005, due - self._wall()))
            self.wake = anyio.Event()
            with anyio.move_on_after(wait):
                await self.wake.wait()

    # -- one attempt --------------------------------------------------------------------
    async def _deliver(self, tg: anyio.abc.TaskGroup, entry: Entry, tries: int) -> None:
        entry_id, fields = entry
        event_id = fields.get("id", b"").decode()
        try:
            try:
                await self._pace()
                attempt = await self.sender.send(event_id, fields.get("payload", b""))
            finally:
                self.slots.release()
            await self._record(tg, entry, tries, attempt)
        except RedisError as exc:
            # The event stays pending in the group: the supervisor restarts this worker,
            # which sends it again from the pending list.
            log.error("could not record delivery of %s: %s", event_id, exc, extra=self._extra)
            raise
        finally:
            self.retrying.discard(entry_id)

    async def _pace(self) -> None:
        if self.bucket is None:
            return
        while (wait := self.bucket.wait(time.monotonic())) > 0:  # noqa: ASYNC110
            await anyio.sleep(wait)

    async def _record(self, tg: anyio.abc.TaskGroup, entry: Entry, tries: int,
                      attempt: Attempt) -> None:
        entry_id, fields = entry
        event_id = fields.get("id", b"").decode()
        now = self._wall()
        outcome = verdict(attempt.status)
        if self.metrics is not None:
            self.metrics.deliveries.labels(self.sub.name, outcome).inc()
            self.metrics.delivery_seconds.labels(self.sub.name).observe(attempt.latency)
        record = {"at": now, "event": event_id, "status": attempt.status,
                  "latency": round(attempt.latency, 4), "error": attempt.error,
                  "attempt": tries + 1}
        if outcome == "delivered":
            self._queue(entry_id, record)
            self._release(tg, fields)
            return
        self._queue(None, record)
        tries += 1
        if outcome == "gone":
            await self.db.schedule_retry(entry_id, tries, now, now)
            await self._disable("the endpoint answered 410 Gone", now)
            return
        delay = self.schedule.next_delay(tries, retry_after=attempt.retry_after,
                                         rand=self._rand)
        if delay is None:
            await self.db.dead_letter(entry_id, fields, attempt.error, tries, now)
            log.warning("event %s dead-lettered after %d attempts (%s)", event_id, tries,
                        attempt.error, extra=self._extra)
            self._release(tg, fields)
        else:
            await self.db.schedule_retry(entry_id, tries, now + delay, now)
            self.wake.set()
            log.info("event %s attempt %d failed (%s); next in %.1fs", event_id, tries,
                     attempt.error, delay, extra=self._extra)
        since = (await self.db.state()).get("failing_since")
        if since and now - float(since) >= self.sub.disable_after:
            await self._disable(f"every attempt failed for {now - float(since):.0f}s", now)

    async def _disable(self, reason: str, now: float) -> None:
        if self.disabled:
            return
        self.disabled = True
        await self.db.set_state(disabled="1", disabled_at=str(now), disabled_reason=reason)
        when = datetime.fromtimestamp(now, UTC)
        event = notifier_event("notifier.subscriber.disabled", "",
                               {"subscriber": self.sub.name, "reason": reason}, when,
                               self.sub.name, str(now))
        await self.store.publish(event)
        log.error("subscriber disabled: %s; `dentally-notifier subscriber enable %s` turns "
                  "it back on", reason, self.sub.name, extra=self._extra)


async def supervise(worker_factory: Callable[[], SubscriberWorker], name: str) -> None:
    """Run one subscriber's worker for ever, restarting it (with backoff) on Redis errors,
    so that one subscriber's trouble never stops the daemon or another subscriber."""
    from notifier.core.retry import backoff
    from notifier.service.poller import sole

    attempt = 0
    while True:
        try:
            worker = worker_factory()
            try:
                await worker.run()
            except BaseExceptionGroup as group:
                raise sole(group) from None
        except Exception as exc:  # isolation: one subscriber never stops the daemon
            delay = backoff(attempt, cap=60)
            attempt += 1
            log.error("delivery stopped (%s: %s); restarting in %.1fs", type(exc).__name__,
                      exc, delay, extra={"subscriber": name},
                      exc_info=not isinstance(exc, RedisError | OSError))
            await anyio.sleep(delay)
