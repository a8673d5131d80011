"""The daemon: Redis, one runner per practice, and signals, in one anyio task group."""

from __future__ import annotations

import logging
import signal
import time
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from notifier.config import Settings
from notifier.errors import StoreError
from notifier.service import retention
from notifier.service.delivery import SubscriberWorker, supervise
from notifier.service.practice import PracticeRunner, owner_id
from notifier.store.delivery import DeliveryStore
from notifier.store.keys import Keys
from notifier.store.redis import Store

log = logging.getLogger("notifier.daemon")

TRIM_INTERVAL = 60.0


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


async def _watch_signals(scope: anyio.CancelScope, runners: list[PracticeRunner]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("received SIGHUP; re-reading API keys")
                for runner in runners:
                    runner.reload()
                continue
            log.info("received %s; stopping", signal.Signals(signum).name)
            scope.cancel()
            return


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
    redis = await connect(settings)
    keys = Keys(settings.redis.prefix)
    store = Store(redis, keys, settings.redis.stream)
    owner = owner_id()
    log.info("started: %d practices, %d subscribers, stream %s", len(settings.practices),
             len(settings.subscribers), settings.redis.stream)
    try:
        async with anyio.create_task_group() as tg:
            runners = [PracticeRunner(store, p, owner) for p in settings.practices]
            if handle_signals:
                tg.start_soon(_watch_signals, tg.cancel_scope, runners)
            for runner in runners:
                tg.start_soon(runner.run)
            for sub in settings.subscribers:
                tg.start_soon(supervise, partial(SubscriberWorker, redis, keys, store, sub),
                              sub.name)
            tg.start_soon(_trim_forever, store, settings)
    finally:
        with anyio.CancelScope(shield=True):
            await redis.aclose()
        log.info("stopped")
