"""The daemon: Redis, one runner per practice, and signals, in one anyio task group."""

from __future__ import annotations

import logging
import signal
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from notifier.config import Settings
from notifier.errors import StoreError
from notifier.service.practice import PracticeRunner, owner_id
from notifier.store.keys import Keys
from notifier.store.redis import Store

log = logging.getLogger("notifier.daemon")


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(settings: Settings) -> Redis:
    redis = Redis.from_url(settings.redis.url)
    try:
        await redis.ping()
    except RedisError as exc:
        await redis.aclose()
        raise StoreError(f"cannot reach Redis at {redact(settings.redis.url)}: {exc}") from None
    return redis


async def _watch_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; stopping", signal.Signals(signum).name)
            scope.cancel()
            return


async def run(settings: Settings, handle_signals: bool = True) -> None:
    """Poll every practice until cancelled (or SIGTERM/SIGINT when ``handle_signals``)."""
    redis = await connect(settings)
    store = Store(redis, Keys(settings.redis.prefix), settings.redis.stream)
    owner = owner_id()
    log.info("started: %d practices, stream %s", len(settings.practices),
             settings.redis.stream)
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_watch_signals, tg.cancel_scope)
            for practice in settings.practices:
                tg.start_soon(PracticeRunner(store, practice, owner).run)
    finally:
        with anyio.CancelScope(shield=True):
            await redis.aclose()
        log.info("stopped")
