"""The daemon: Redis, one runner per practice, and signals, in one anyio task group."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from notifier.config import Settings
from notifier.core.health import Health
from notifier.errors import StoreError
from notifier.ops.systemd import SystemdNotifier, watchdog_interval
from notifier.service import retention
from notifier.service.delivery import SubscriberWorker, supervise
from notifier.service.practice import PracticeRunner, owner_id
from notifier.store.delivery import DeliveryStore
from notifier.store.keys import Keys
from notifier.store.redis import Store

log = logging.getLogger("notifier.daemon")

TRIM_INTERVAL = 60.0
STATUS_EVERY = 10.0


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def pool_size(settings: Settings) -> int:
    """Connections the daemon may need at once: each subscriber holds one in a blocking read
    and uses more while its deliveries complete; each practice polls its resources."""
    return 16 + 4 * len(settings.subscribers) + 2 * sum(len(p.resources)
                                                         for p in settings.practices)


def client(url: str, max_connections: int) -> Redis:
    """A client whose pool waits for a free connection instead of failing at its limit."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return Redis(connection_pool=pool)


async def connect(settings: Settings) -> Redis:
    redis = client(settings.redis.url, pool_size(settings))
    try:
        await redis.ping()
    except RedisError as exc:
        await redis.aclose()
        raise StoreError(f"cannot reach Redis at {redact(settings.redis.url)}: {exc}") from None
    return redis


async def _watch_signals(scope: anyio.CancelScope, runners: list[PracticeRunner],
                         notify: SystemdNotifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                notify.reloading()
                log.info("received SIGHUP; re-reading API keys")
                for runner in runners:
                    runner.reload()
                notify.ready("reloaded API keys")
                continue
            log.info("received %s; stopping", signal.Signals(signum).name)
            notify.stopping()
            scope.cancel()
            return


async def status_line(store: Store, runners: list[PracticeRunner],
                      workers: list[SubscriberWorker]) -> str:
    """``3 practices, 1 key revoked, 2 subscribers, lag 0``: one line, the truth."""
    revoked = sum(r.revoked for r in runners)
    disabled = sum(w.disabled for w in workers)
    lag = 0
    try:
        for g in await store.redis.xinfo_groups(store.stream):
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if any(w.sub.name == name and not w.disabled for w in workers):
                lag += int(g.get("lag") or 0) + int(g.get("pending") or 0)
    except RedisError:
        pass
    parts = [f"{len(runners)} practices"]
    if revoked:
        parts.append(f"{revoked} key{'s' * (revoked > 1)} revoked")
    parts.append(f"{len(workers)} subscribers")
    if disabled:
        parts.append(f"{disabled} disabled")
    parts.append(f"lag {lag}")
    return ", ".join(parts)


async def _watchdog(notify: SystemdNotifier, health: Health, store: Store,
                    runners: list[PracticeRunner], workers: list[SubscriberWorker],
                    interval: float | None) -> None:
    """Feed systemd's watchdog only while every loop keeps its promise; keep STATUS true."""
    last_status = 0.0
    while True:
        now = time.time()
        stalled = health.stalled(now)
        if stalled:
            log.error("no progress from %s; not feeding the watchdog", ", ".join(stalled))
        elif interval is not None:
            notify.watchdog()
        if now - last_status >= STATUS_EVERY:
            notify.status(await status_line(store, runners, workers))
            last_status = now
        await anyio.sleep(interval or STATUS_EVERY)


async def _warn_about_store(redis: Redis) -> None:
    """Say so at start when Redis could lose or evict what the notifier keeps in it."""
    try:
        info = await redis.info()
    except RedisError:
        return
    if info.get("maxmemory_policy", "noeviction") != "noeviction":
        log.warning("Redis maxmemory-policy is %s: it may evict cursors, snapshots and "
                    "undelivered events; set noeviction", info["maxmemory_policy"])
    if not info.get("aof_enabled"):
        log.warning("Redis runs without AOF persistence: a Redis restart loses events not "
                    "yet delivered and the consumer groups; enable appendonly")


async def _trim_forever(store: Store, settings: Settings) -> None:
    """Trim the stream by ``retention`` every minute, held back by enabled subscribers."""
    while True:
        try:
            enabled = set()
            for sub in settings.subscribers:
                state = await DeliveryStore(store.redis, store.keys, store.stream,
                                            sub.name).state()
                if state.get("disabled") != "1":
                    enabled.add(sub.name)
            await retention.trim(store.redis, store.stream, enabled,
                                 settings.redis.retention, time.time())
        except RedisError as exc:
            log.warning("could not trim the stream: %s", exc)
        await anyio.sleep(TRIM_INTERVAL)


async def run(settings: Settings, handle_signals: bool = True) -> None:
    """Poll every practice until cancelled (or SIGTERM/SIGINT when ``handle_signals``)."""
    notify = SystemdNotifier()
    health = Health()
    redis = await connect(settings)
    keys = Keys(settings.redis.prefix)
    store = Store(redis, keys, settings.redis.stream)
    owner = owner_id()
    await _warn_about_store(redis)
    log.info("started: %d practices, %d subscribers, stream %s", len(settings.practices),
             len(settings.subscribers), settings.redis.stream)
    runners = [PracticeRunner(store, p, owner, health=health) for p in settings.practices]
    workers = [SubscriberWorker(redis, keys, store, sub, health=health)
               for sub in settings.subscribers]
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_watch_signals, tg.cancel_scope, runners, notify)
            for runner in runners:
                tg.start_soon(runner.run)
            for sub, worker in zip(settings.subscribers, workers, strict=True):
                tg.start_soon(supervise, _reuse_first(worker, partial(
                    SubscriberWorker, redis, keys, store, sub, health=health)), sub.name)
            tg.start_soon(_trim_forever, store, settings)
            notify.ready(await status_line(store, runners, workers))
            tg.start_soon(_watchdog, notify, health, store, runners, workers,
                          watchdog_interval())
    finally:
        notify.stopping()
        with anyio.CancelScope(shield=True):
            await redis.aclose()
        log.info("stopped")


def _reuse_first(first: SubscriberWorker,
                 make: Callable[[], SubscriberWorker]) -> Callable[[], SubscriberWorker]:
    """The worker the status line watches first; fresh ones after a restart."""
    made = [first]

    def factory() -> SubscriberWorker:
        return made.pop() if made else make()
    return factory
