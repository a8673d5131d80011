"""SIGTERM and SIGHUP on the daemon as a real process."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until, write_config
from tests.receiver import Receiver, Reply

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_sigterm_during_backfill_and_delivery_loses_nothing(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 1500, spread_days=50)
    await control.quirks(latency=0.01)
    with Receiver(lambda r, n: Reply(hang=0.02)) as rx:
        d = daemon_factory(resources=["patients"], initial_sync="emit", per_page=50,
                           subscribers=[{"name": "crm", "url": rx.url, "secret": SECRET,
                                         "allow_private": True, "start": "beginning",
                                         "max_in_flight": 2}])
        for n in range(1, 4):
            d.start()

            async def started(n: int = n) -> bool:   # a loaded machine imports slowly
                return d.log.read_text().count('"msg": "started') >= n
            await wait_until(started, 30, "the daemon's start")
            await anyio.sleep(1.5)
            began = time.monotonic()
            d.signal(signal.SIGTERM)
            assert d.proc is not None and d.proc.wait(30) == 0
            assert time.monotonic() - began < 10   # well within TimeoutStopSec
        d.start()

        async def all_published() -> bool:
            return await redis.xlen(ns.stream) >= 1500
        await wait_until(all_published, 60, "the backfill")
        events = await stream_events(redis, ns.stream)
        assert Counter(e["type"] for e in events) == {"patient.created": 1500}
        assert {e["data"]["record_id"] for e in events} == set(ids)

        async def all_delivered() -> bool:
            return len(set(rx.ids())) == 1500
        await wait_until(all_delivered, 90, "every delivery")


async def test_sighup_applies_a_new_config_and_refuses_a_broken_one(
        redis: Redis, ns: Namespace, control: SandboxControl, sandbox: SandboxThread,
        redis_url: str, daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 5)
    await control.seed("invoices", 4)
    d = daemon_factory(resources=["patients"], initial_sync="emit")
    d.start()

    async def count(type_: str, n: int) -> bool:
        evs: list[dict[str, Any]] = await stream_events(redis, ns.stream)
        return sum(e["type"] == type_ for e in evs) >= n
    await wait_until(lambda: count("patient.created", 5), 20, "patients")
    with Receiver() as rx:
        write_config(d.config, redis_url=redis_url, prefix=ns.prefix, stream=ns.stream,
                     base_url=sandbox.url, key=sandbox.key or "", initial_sync="emit",
                     resources=["patients", "invoices"],
                     subscribers=[{"name": "crm", "url": rx.url, "secret": SECRET,
                                   "allow_private": True, "start": "beginning"}])
        d.signal(signal.SIGHUP)
        await wait_until(lambda: count("invoice.created", 4), 20, "the added resource")

        async def delivered() -> bool:
            return len(set(rx.ids())) >= 9
        await wait_until(delivered, 20, "the added subscriber")
        good = d.config.read_text()
        d.config.write_text(good.replace('region = "sandbox"', 'region = "mars"'))
        d.signal(signal.SIGHUP)
        await anyio.sleep(0.5)
        assert d.alive()
        await control.mutate("patients", count=1)
        await wait_until(lambda: count("patient.updated", 1), 20, "polling on the old config")
    log = d.log.read_text()
    assert "reload refused" in log and "practices[0] (main).region" in log


async def test_signals_during_start_up_are_acted_on_not_fatal(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """A reload or a stop sent while the daemon still imports (seconds, on a loaded host)
    used to meet the default action: killed by SIGHUP (systemd sees a crash) or SIGTERM."""
    await control.seed("patients", 5)
    d = daemon_factory(resources=["patients"], initial_sync="emit")
    d.start()
    await anyio.sleep(0.1)            # inside the interpreter, before the event loop
    d.signal(signal.SIGHUP)

    async def published() -> bool:
        return await redis.xlen(ns.stream) >= 5
    await wait_until(published, 30, "the sync after an early SIGHUP")
    assert d.alive()
    assert "reloaded" in d.log.read_text()      # the early SIGHUP was a reload
    assert d.stop() == 0
    d.start()
    await anyio.sleep(0.1)
    d.signal(signal.SIGTERM)
    assert d.proc is not None and d.proc.wait(30) == 0
