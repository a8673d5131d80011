"""Connecting to Redis: the client every command and the daemon use, URL redaction for
messages, the risks a server's settings pose to our data, and prefix cleanup.

The client survives a Redis outage on its own: every command is retried with a short
capped backoff on connection and timeout errors (a connection found dead in the pool is
replaced, not reported), idle pooled connections are checked (``health_check_interval``)
before use, and loops that outlast the retries wait for Redis with ``wait_for`` rather
than an exponential backoff, so that they resume within seconds of Redis answering again.

A blocking ``XREAD``/``XREADGROUP`` must block for less than the client's socket timeout,
or a quiet stream raises ``TimeoutError``: ``block_ms`` gives the longest safe block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifier.errors import StoreError

log = logging.getLogger("notifier.redis")

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 2
RETRIES = 3
RETRY_CAP = 1.0
# After a command's retries are spent, how often a loop asks whether Redis is back, and
# the longest backoff of a loop that retries after a Redis error (so that it resumes
# within a few seconds of Redis answering again).
WAIT_POLL = 0.5
REDIS_RETRY_CAP = 2.0
_SECRET_PARAMS = ("pass", "secret", "token", "auth", "key", "credential")


def redact(url: str) -> str:
    """``url`` without any credential, for messages: the userinfo's password and any
    query parameter that could carry one (``?password=``, ``?token=``...)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}:***@{host}" if sep else f"{userinfo}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS)
                                else v) for k, v in pairs], safe="*", quote_via=quote)
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparsable Redis URL>"


def client(url: str, max_connections: int, *, socket_timeout: float = SOCKET_TIMEOUT) -> Redis:
    """A client whose pool waits for a free connection instead of failing at its limit,
    and that rides out a dead connection or a short outage (see the module's doc)."""
    retry = Retry(EqualJitterBackoff(cap=RETRY_CAP, base=0.1), RETRIES,
                  supported_errors=(RedisConnectionError, RedisTimeoutError))
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT, socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL, retry=retry)
    return Redis(connection_pool=pool)


def socket_timeout(redis: Redis) -> float | None:
    value = redis.connection_pool.connection_kwargs.get("socket_timeout")
    return None if value is None else float(value)


def block_ms(redis: Redis, wanted: float) -> int:
    """Milliseconds a blocking stream read may wait: ``wanted`` seconds, but well within
    the client's socket timeout (half of it), so a quiet stream is not a timeout."""
    limit = socket_timeout(redis)
    seconds = wanted if limit is None else min(wanted, limit / 2)
    return max(1, int(seconds * 1000))


async def connect(url: str, max_connections: int = 16, *,
                  socket_timeout: float = SOCKET_TIMEOUT) -> Redis:
    """A client that has answered a PING; StoreError (naming no credential) if not."""
    redis = client(url, max_connections, socket_timeout=socket_timeout)
    try:
        await redis.ping()
    except RedisError as exc:
        await redis.aclose()
        raise StoreError(f"cannot reach Redis at {redact(url)}: {exc}") from None
    return redis


async def wait_for(redis: Redis, what: str, extra: dict[str, str] | None = None,
                   alive: Callable[[], None] | None = None) -> float:
    """Return once Redis answers a PING again (asked every ``WAIT_POLL`` seconds); the
    seconds waited. Logs once when it starts waiting and once when Redis is back.
    ``alive`` is called at each try (a health beat: waiting for Redis is no wedge)."""
    started = time.monotonic()
    logged = False
    while True:
        if alive is not None:
            alive()
        try:
            await redis.ping()
        except RedisError as exc:
            if not logged:
                log.warning("Redis does not answer (%s); %s waits for it", exc, what,
                            extra=extra)
                logged = True
            await anyio.sleep(WAIT_POLL)
            continue
        waited = time.monotonic() - started
        if logged:
            log.info("Redis answers again after %.1fs; %s resumes", waited, what, extra=extra)
        return waited


def store_risks(info: dict[str, Any]) -> list[tuple[str, str]]:
    """What could make Redis lose or evict our data, from its INFO: (setting, warning)."""
    risks = []
    policy = info.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        risks.append(("redis eviction", f"maxmemory-policy is {policy}: Redis may evict "
                      "cursors, snapshots and undelivered events; set noeviction"))
    if not info.get("aof_enabled"):
        risks.append(("redis persistence", "appendonly is off: a Redis restart loses the "
                      "events not yet delivered and the consumer groups; enable AOF"))
    return risks


async def warn_about_store(redis: Redis) -> None:
    """Say so at start when Redis could lose or evict what the notifier keeps in it."""
    try:
        info = await redis.info()
    except RedisError:
        return
    for _, warning in store_risks(info):
        log.warning("%s", warning)


async def delete_prefix(redis: Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (tests, the bench and the demo clean up so)."""
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=5000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i:i + 1000])
    return len(keys)
