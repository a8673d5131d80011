"""Delivers the event stream to one subscriber: filters, signing, retries, dead letters,
ordering, isolation and disabling.

Each subscriber has its own consumer group, HTTP pool, concurrency limit and tasks, so a
slow, hanging or failing one never delays another. An event is acknowledged in its group
only after a 2xx, when it is dead-lettered, or when it was trimmed from the stream before
it could be sent (counted as lost); until then it stays pending, and a restarted daemon
sends it again (at-least-once, same ``webhook-id``). What each attempt's outcome leads to
is decided in ``core.delivery``; this module carries it out.

Without a crash an event is never sent again after a success: the worker *owns* every
entry it is sending or whose outcome is not yet in Redis (``owned``), and the retrier
reads the due retries and discounts the owned ones under the same lock under which the
flusher writes acknowledgements, so it can neither see a retry whose acknowledgement is
being written nor start one that is already running.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from notifier.config import SubscriberConfig
from notifier.core.delivery import Policy, decide, outcome
from notifier.core.health import Health
from notifier.core.retry import TokenBucket
from notifier.core.shaping import Skip, shape
from notifier.delivery.sender import Attempt, Sender
from notifier.events import notifier_event
from notifier.ops.metrics import Metrics
from notifier.store.connection import REDIS_RETRY_CAP, block_ms, wait_for
from notifier.store.delivery import DeliveryStore, Entry, is_nogroup
from notifier.store.keys import Keys
from notifier.store.redis import Store

log = logging.getLogger("notifier.delivery")

CONSUMER = "dentally-notifier"
FLUSH_DELAY = 0.005
READ_COUNT = 100
READ_BLOCK = 1.0
RESCAN_AFTER = 3 * READ_BLOCK
STATE_POLL = 1.0
BEAT_WITHIN = 90.0
DISABLED_NOTICE = "notifier.subscriber.disabled"
METRIC_OUTCOME = {"delivered": "delivered", "gone": "gone", "failed": "retry"}

RecordKey = tuple[bytes, bytes, bytes] | None


def matches(patterns: list[str], event_type: str) -> bool:
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def about(fields: dict[str, bytes], subscriber: str) -> bool:
    """Is this entry the notice that ``subscriber`` itself was disabled? (Sent to every
    other subscriber that wants it, never to the one it is about.)"""
    if fields.get("type", b"") != DISABLED_NOTICE.encode():
        return False
    try:
        return bool(json.loads(fields.get("payload", b"{}"))["data"]["subscriber"]
                    == subscriber)
    except (ValueError, KeyError, TypeError):
        return False


class SubscriberWorker:
    def __init__(self, redis: Redis, keys: Keys, store: Store, sub: SubscriberConfig, *,
                 wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random,
                 health: Health | None = None, metrics: Metrics | None = None,
                 regions: Mapping[str, str] | None = None) -> None:
        self.sub = sub
        self.shape = sub.shape(regions)
        self.store = store
        self.db = DeliveryStore(redis, keys, store.stream, sub.name)
        self.sender = Sender(sub.url, sub.secret_values(), timeout=sub.timeout,
                             max_in_flight=sub.max_in_flight, allow_private=sub.allow_private,
                             headers=sub.header_values(), content_type=self.shape.content_type)
        self._bodies: dict[str, bytes] = {}
        """Bodies shaped when an entry was dispatched, for its first attempt."""
        self.policy = Policy(sub.retry_schedule, sub.disable_after)
        self.bucket = TokenBucket(sub.max_per_second) if sub.max_per_second else None
        self.slots = anyio.Semaphore(sub.max_in_flight)
        self.busy: dict[Any, deque[Entry]] = {}
        self.owned: set[str] = set()
        self.disabled = False
        self.wake = anyio.Event()
        self._wall = wall
        self._rand = rand
        self._extra = {"subscriber": sub.name}
        self._acks: list[str] = []
        self._logs: list[str] = []
        self._flush_due = anyio.Event()
        self._due_lock = anyio.Lock()
        self.health = health or Health()
        self.metrics = metrics
        self._beat = f"subscriber/{sub.name}"
        # The reader may wait for a slot while every attempt in flight runs to its timeout
        # (and, with a rate cap, for its turn).
        pacing = sub.max_in_flight / sub.max_per_second if sub.max_per_second else 0.0
        self._beat_within = BEAT_WITHIN + sub.timeout + pacing

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        now = self._wall()
        created = await self.db.ensure_group(self.sub.start, now)
        if created == "created":
            log.info("consumer group created (start = %s)", self.sub.start, extra=self._extra)
        elif created == "recreated":
            await self._report_group_lost(now)
        self.disabled = await self.db.is_disabled()
        await self._flush()   # a failed worker's acks first (see adopt)
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
        """Write the queued acks and attempt records. If Redis fails, they stay queued
        (the flush is idempotent): the supervisor hands them to the next worker, which
        writes them before it reads the pending list, so that an outage during a flush
        never sends a delivered event again (the campaign's seed 4, ``redis.down``)."""
        self._flush_due = anyio.Event()
        acks, logs = self._acks, self._logs
        if not acks and not logs:
            return
        self._acks, self._logs = [], []
        try:
            async with self._due_lock:  # the retrier reads due retries under this lock
                await self.db.flush(acks, logs, self._wall())
        except BaseException:
            self._acks[:0], self._logs[:0] = acks, logs
            raise
        self.owned.difference_update(acks)

    def unflushed(self) -> tuple[list[str], list[str]]:
        """Acks and attempt records not yet in Redis (for the worker that replaces this
        one after a Redis failure)."""
        return list(self._acks), list(self._logs)

    def adopt(self, acks: list[str], logs: list[str]) -> None:
        """Take over a failed worker's unwritten acks: written before the pending list is
        read, and owned until then (never sent again)."""
        self._acks[:0], self._logs[:0] = acks, logs
        self.owned.update(acks)

    def _queue(self, ack: str | None, record: dict[str, Any]) -> None:
        if ack is not None:
            self._acks.append(ack)  # stays owned until the ack is in Redis
        self._logs.append(json.dumps(record))
        self._flush_due.set()

    async def _watch_state(self) -> None:
        while True:
            await anyio.sleep(STATE_POLL)
            disabled = await self.db.is_disabled()
            if self.disabled and not disabled:
                log.info("re-enabled; delivering again", extra=self._extra)
                self.wake.set()
            self.disabled = disabled

    async def _wait_enabled(self, *, reader: bool = False) -> None:
        """While the subscriber is disabled: a pause on purpose, not a stall."""
        if not self.disabled:
            return
        if reader:
            self.health.pause(self._beat, "disabled")
        while self.disabled:  # noqa: ASYNC110 - the flag is flipped from Redis by the CLI
            await anyio.sleep(STATE_POLL / 4)
        if reader:
            self.health.beat(self._beat, self._wall(), self._beat_within)

    def alive(self) -> None:
        """A sign of life from outside the reader (its supervisor waiting for Redis)."""
        self.health.beat(self._beat, self._wall(), self._beat_within)

    # -- reading ------------------------------------------------------------------------
    async def _reader(self, tg: anyio.abc.TaskGroup) -> None:
        self.health.beat(self._beat, self._wall(), self._beat_within)
        await self._wait_enabled(reader=True)
        handled: set[str] | None = await self._scan_pending(tg, set())
        rescan_at = time.monotonic() + RESCAN_AFTER
        block = block_ms(self.db.redis, READ_BLOCK)
        while True:
            self.health.beat(self._beat, self._wall(), self._beat_within)
            await self._wait_enabled(reader=True)
            if handled is not None and time.monotonic() >= rescan_at:
                await self._scan_pending(tg, handled)
                handled = None
            try:
                entries = await self.db.read(CONSUMER, new=True, count=READ_COUNT,
                                             block_ms=block)
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                await self.db.ensure_group(self.sub.start, self._wall(), existed=True)
                await self._report_group_lost(self._wall())
                continue
            if handled is not None:
                handled.update(e[0] for e in entries)
            lost = []
            for entry in entries:
                if entry[1]:
                    await self._dispatch(tg, entry)
                else:
                    lost.append(entry[0])
            await self._lost(lost)

    async def _scan_pending(self, tg: anyio.abc.TaskGroup, skip: set[str]) -> set[str]:
        """Take up what this consumer holds in the group's pending list (but ``skip``):
        what the daemon held when it last stopped. Done at start and once more
        :data:`RESCAN_AFTER` later, for entries the worker this one replaced read while it
        was being stopped (a cancelled blocking read that Redis served anyway, its socket's
        close not yet seen): those would otherwise wait, never attempted, until the next
        restart (the fault campaign's seed 202, a SIGHUP). Returns the ids it saw."""
        after = "0"
        lost: list[str] = []
        seen: set[str] = set()
        while True:
            entries = await self.db.read(CONSUMER, new=False, count=READ_COUNT, after=after)
            if not entries:
                break
            for entry in entries:
                after = entry[0]
                seen.add(entry[0])
                if entry[0] in skip:
                    continue
                if not entry[1]:
                    lost.append(entry[0])
                elif await self.db.scheduled(entry[0]):
                    key = self._key(entry[1])
                    if key is not None:
                        self.busy.setdefault(key, deque())
                else:
                    await self._dispatch(tg, entry)
        await self._lost(lost)
        return seen | skip

    async def _report_group_lost(self, now: float) -> None:
        count = await self.db.group_lost(now)
        log.error("consumer group was lost (Redis restarted without persistence, or it was "
                  "deleted; %d time%s so far); recreated from the oldest event still in the "
                  "stream: events may be sent again, and undelivered events trimmed from "
                  "the stream meanwhile are gone", count, "s" * (count != 1),
                  extra=self._extra)

    async def _lost(self, entry_ids: list[str]) -> None:
        """Pending entries no longer in the stream (trimmed while the subscriber was
        disabled or far behind): never sent; acknowledged, counted, reported once."""
        if not entry_ids:
            return
        counted = await self.db.lost(entry_ids, self._wall())
        self.owned.difference_update(entry_ids)
        if counted:
            log.error("%d event%s waiting for this subscriber %s trimmed from the stream "
                      "before delivery (retention) and cannot be sent: counted as lost "
                      "(first %s)", counted, "s" * (counted != 1),
                      "were" if counted != 1 else "was", entry_ids[0], extra=self._extra)

    def _key(self, fields: dict[str, bytes]) -> RecordKey:
        if self.sub.ordering != "per_record" or not fields.get("record_id"):
            return None
        return (fields.get("practice", b""), fields.get("resource", b""), fields["record_id"])

    async def _dispatch(self, tg: anyio.abc.TaskGroup, entry: Entry) -> None:
        entry_id, fields = entry
        event_type = fields.get("type", b"").decode()
        if not matches(self.sub.events, event_type) or about(fields, self.sub.name):
            await self.db.skip(entry_id)
            return
        body = self._shaped(fields)
        if body is None:
            await self.db.skip(entry_id)
            return
        self._bodies[entry_id] = body
        key = self._key(fields)
        if key is not None:
            if key in self.busy:
                self.busy[key].append(entry)
                return
            self.busy[key] = deque()
        await self._start(tg, entry, 0)

    async def _start(self, tg: anyio.abc.TaskGroup, entry: Entry, tries: int) -> None:
        self.owned.add(entry[0])
        await self.slots.acquire()
        tg.start_soon(self._deliver, tg, entry, tries)

    def _release(self, tg: anyio.abc.TaskGroup, fields: dict[str, bytes]) -> None:
        key = self._key(fields)
        if key is None:
            return
        queue = self.busy.get(key)
        if queue:
            tg.start_soon(self._start, tg, queue.popleft(), 0)
        else:
            self.busy.pop(key, None)

    # -- retries --------------------------------------------------------------------------
    async def _retrier(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await self._wait_enabled()
            async with self._due_lock:
                due = [i for i in await self.db.due(self._wall(), READ_COUNT)
                       if i not in self.owned]
                self.owned.update(due)
            lost = []
            for entry_id in due:
                fields = await self.db.entry(entry_id)
                if not fields:
                    lost.append(entry_id)
                    continue
                tries = await self.db.tries(entry_id)
                await self._start(tg, (entry_id, fields), tries)
            await self._lost(lost)
            when = await self.db.next_due()
            wait = 1.0 if when is None else min(1.0, max(0.005, when - self._wall()))
            self.wake = anyio.Event()
            with anyio.move_on_after(wait):
                await self.wake.wait()

    # -- one attempt --------------------------------------------------------------------
    def _shaped(self, fields: dict[str, bytes]) -> bytes | None:
        """What this subscriber receives of the entry, or None if it is not for it (counted
        as skipped, with the reason)."""
        try:
            body = shape(self.shape, fields)
        except (ValueError, TypeError, AttributeError):  # not a JSON envelope: sent as is
            return fields.get("payload", b"")
        if isinstance(body, Skip):
            if self.metrics is not None:
                self.metrics.skipped.labels(self.sub.name, body.reason).inc()
            return None
        return body

    async def _deliver(self, tg: anyio.abc.TaskGroup, entry: Entry, tries: int) -> None:
        entry_id, fields = entry
        event_id = fields.get("id", b"").decode()
        try:
            body = self._bodies.pop(entry_id, None)
            if body is None:
                body = self._shaped(fields)  # a retry, or the rules changed meanwhile
            if body is None:
                self.slots.release()
                self._queue(entry_id, {"at": self._wall(), "event": event_id,
                                       "status": None, "skipped": True, "attempt": tries + 1,
                                       "latency": 0, "error": ""})
                self._release(tg, fields)
                return
            try:
                await self._pace()
                attempt = await self.sender.send(event_id, body)
            finally:
                self.slots.release()
            await self._record(tg, entry, tries, attempt)
        except RedisError as exc:
            # The event stays pending in the group: the supervisor restarts this worker,
            # which sends it again from the pending list.
            log.error("could not record delivery of %s: %s", event_id, exc, extra=self._extra)
            raise

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
        kind = outcome(attempt.status)
        if self.metrics is not None:
            self.metrics.deliveries.labels(self.sub.name, METRIC_OUTCOME[kind]).inc()
            self.metrics.delivery_seconds.labels(self.sub.name).observe(attempt.latency)
        record = {"at": now, "event": event_id, "status": attempt.status,
                  "latency": round(attempt.latency, 4), "error": attempt.error,
                  "attempt": tries + 1}
        if kind == "delivered":
            self._queue(entry_id, record)
            self._release(tg, fields)
            return
        self._queue(None, record)
        state = await self.db.state()
        d = decide(self.policy, attempt.status, tries, now,
                   failing_since=state.failing_since, retry_after=attempt.retry_after,
                   rand=self._rand)
        try:
            if d.action == "dead_letter":
                await self.db.dead_letter(entry_id, fields, attempt.error, d.attempts, now)
                log.warning("event %s dead-lettered after %d attempts (%s)", event_id,
                            d.attempts, attempt.error, extra=self._extra)
                self._release(tg, fields)
            else:  # retry, or disable (the event is retried at once on enable)
                delay = d.delay or 0.0
                await self.db.schedule_retry(entry_id, d.attempts, now + delay, now)
                self.wake.set()
                if d.action == "retry":
                    log.info("event %s attempt %d failed (%s); next in %.1fs", event_id,
                             d.attempts, attempt.error, delay, extra=self._extra)
        finally:
            self.owned.discard(entry_id)
        if d.disable:
            await self._disable(d.disable, now)

    async def _disable(self, reason: str, now: float) -> None:
        if self.disabled:
            return
        self.disabled = True
        if not await self.db.disable(reason, now):
            return
        when = datetime.fromtimestamp(now, UTC)
        event = notifier_event(DISABLED_NOTICE, "",
                               {"subscriber": self.sub.name, "reason": reason,
                                "action": f"fix the endpoint, then run `dentally-notifier "
                                          f"subscriber enable {self.sub.name}`"},
                               when, self.sub.name, str(now))
        await self.store.publish(event)
        log.error("subscriber disabled: %s; `dentally-notifier subscriber enable %s` turns "
                  "it back on", reason, self.sub.name, extra=self._extra)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of (nested) exception groups."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def supervise(worker_factory: Callable[[], SubscriberWorker], name: str) -> None:
    """Run one subscriber's worker for ever, restarting it on errors, so that one
    subscriber's trouble never stops the daemon or another subscriber. After a Redis
    error it restarts as soon as Redis answers again; after any other error, with
    backoff."""
    from notifier.core.retry import backoff
    from notifier.service.poller import sole

    attempt = 0
    extra = {"subscriber": name}
    carried: tuple[list[str], list[str]] = ([], [])
    while True:
        worker: SubscriberWorker | None = None
        try:
            worker = worker_factory()
            worker.adopt(*carried)
            carried = ([], [])
            try:
                await worker.run()
            except BaseExceptionGroup as group:
                redis_failed, other = group.split(RedisError)
                if redis_failed is not None and other is None:
                    # Several tasks met the same outage at once: still a Redis failure.
                    raise _first(redis_failed) from None
                raise sole(group) from None
        except RedisError as exc:
            log.warning("delivery paused: Redis failed (%s: %s)", type(exc).__name__, exc,
                        extra=extra)
            if worker is not None:
                carried = worker.unflushed()
            if worker is None:
                await anyio.sleep(REDIS_RETRY_CAP)
            else:
                await wait_for(worker.db.redis, "delivery", extra, alive=worker.alive)
        except Exception as exc:  # isolation: one subscriber never stops the daemon
            if worker is not None:
                carried = worker.unflushed()
            delay = backoff(attempt, cap=60)
            attempt += 1
            log.error("delivery stopped (%s: %s); restarting in %.1fs", type(exc).__name__,
                      exc, delay, extra=extra, exc_info=not isinstance(exc, OSError))
            await anyio.sleep(delay)
