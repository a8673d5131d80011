"""Shared fixtures: a real Redis (REDIS_URL, else an embedded Valkey), the sandbox on
loopback, and a per-test key prefix and stream so a shared server is left as found."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from notifier.ops.embedded import redis_server
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.store.keys import Keys
from notifier.store.redis import Store
from tests.integration.daemon import Daemon, write_config
from tests.proxy import RedisProxy


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` when set (CI points it at the machine's server), else an embedded
    Valkey started for the session."""
    with redis_server() as url:
        yield url


class Namespace:
    """One test's key prefix and stream name."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"test-{tag}"
        self.stream = f"test-{tag}:events"


@pytest.fixture
def ns(redis_url: str) -> Iterator[Namespace]:
    """Torn down after every fixture that uses it (the daemons a test started included),
    so it deletes what they wrote last, even in tests that never opened the ``redis``
    fixture: a shared server is left as found."""
    space = Namespace()
    yield space
    client = SyncRedis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{space.prefix}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()


@pytest.fixture
async def redis(redis_url: str, ns: Namespace) -> AsyncIterator[Redis]:
    """A client; ``ns`` deletes what the test wrote, after every other fixture."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[RedisProxy]:
    """A TCP proxy to the test Redis (lost replies, outages); its ``url`` to connect to."""
    parts = urlsplit(redis_url)
    proxy = RedisProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def store(redis: Redis, ns: Namespace) -> Store:
    return Store(redis, Keys(ns.prefix), ns.stream)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as sb:
        yield sb


@pytest.fixture
async def control(sandbox: SandboxThread) -> AsyncIterator[SandboxControl]:
    ctl = SandboxControl(sandbox.url)
    yield ctl
    await ctl.aclose()


@pytest.fixture
def daemon_factory(tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread
                   ) -> Iterator[Callable[..., Daemon]]:
    """Makes real daemon processes against this test's sandbox, Redis and namespace."""
    made: list[Daemon] = []

    def make(**practice_keys: Any) -> Daemon:
        n = len(made)
        key = practice_keys.pop("key", sandbox.key or "")
        cfg = write_config(tmp_path / f"config{n}.toml", redis_url=redis_url,
                           prefix=ns.prefix, stream=ns.stream, base_url=sandbox.url,
                           key=key, **practice_keys)
        d = Daemon(cfg, tmp_path / f"daemon{n}.log")
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
