"""The practice lease through the daemon as a process: reloads hand it over without a gap
and never produce a false "lost the practice lock" alarm."""

from __future__ import annotations

import json
import signal
import sys
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

RELOADS = 20


async def test_twenty_reloads_that_change_a_practice_keep_its_lease_and_raise_no_alarm(
        redis: Redis, ns: Namespace, control: SandboxControl, sandbox: SandboxThread,
        redis_url: str, daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 30)
    d = daemon_factory(resources=["patients"], initial_sync="emit")
    d.start()
    lock = f"{ns.prefix}:{{main}}:lock"

    async def synced() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(synced, 20, "the first sync")
    assert await redis.exists(lock)
    gaps = 0
    sampling = True

    async def sample() -> None:
        nonlocal gaps
        while sampling:
            gaps += not await redis.exists(lock)
            await anyio.sleep(0.02)

    changed: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        for i in range(RELOADS):
            # Every reload changes the practice, so its runner is replaced.
            write_config(d.config, redis_url=redis_url, prefix=ns.prefix, stream=ns.stream,
                         base_url=sandbox.url, key=sandbox.key or "", initial_sync="emit",
                         resources=["patients"], poll_interval=0.2 + 0.01 * (i % 2))
            d.signal(signal.SIGHUP)
            await anyio.sleep(0.3)
            changed += await control.mutate("patients", ids=[ids[i]])
            await anyio.sleep(0.2)
        # Several renewals of the last runner's lease (every 0.5 s here). (The old design
        # renewed every 10 s; its gap after each reload shows in the samples at once.)
        await anyio.sleep(2)
        sampling = False

    async def all_published() -> bool:
        evs: list[dict[str, Any]] = await stream_events(redis, ns.stream)
        return {e["data"]["record_id"] for e in evs if e["type"] == "patient.updated"} \
            >= set(changed)
    await wait_until(all_published, 20, "every change made during the reloads")
    assert d.alive()
    log = d.log.read_text()
    assert "lost the practice lock" not in log
    assert "lost the practice lease" not in log
    assert gaps == 0, f"the lease key was missing in {gaps} samples"
    evs = await stream_events(redis, ns.stream)
    assert len({e["id"] for e in evs}) == len(evs)
    assert Counter(e["type"] for e in evs)["patient.created"] == 30


async def test_two_daemons_on_one_practice_never_both_publish_and_a_killed_one_hands_on(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """Two daemons configured for the same practice (a deployment mistake, or a container
    started twice): one polls, the other waits; kill -9 the one that polls and the other
    takes over once the lease expires (1.5 s here), judged by expiry alone."""
    ids = await control.seed("patients", 40)
    a = daemon_factory(resources=["patients"], initial_sync="emit")
    b = daemon_factory(resources=["patients"], initial_sync="emit")
    a.start()
    b.start()

    async def synced() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(synced, 20, "the first sync")
    changed: list[str] = []
    for i in range(5):
        changed += await control.mutate("patients", ids=[ids[i]])
        await anyio.sleep(0.2)
    holder = (await redis.get(f"{ns.prefix}:{{main}}:lock") or b"").decode()
    assert holder
    polling = a if f":{a.proc.pid}:" in holder else b   # type: ignore[union-attr]
    waiting = b if polling is a else a
    polling.kill9()
    for i in range(5, 10):
        changed += await control.mutate("patients", ids=[ids[i]])
        await anyio.sleep(0.2)

    async def all_published() -> bool:
        evs: list[dict[str, Any]] = await stream_events(redis, ns.stream)
        return {e["data"]["record_id"] for e in evs if e["type"] == "patient.updated"} \
            >= set(changed)
    await wait_until(all_published, 20, "every change, across the takeover")
    evs = await stream_events(redis, ns.stream)
    assert len({e["id"] for e in evs}) == len(evs), "an event was published twice"
    assert Counter(e["type"] for e in evs)["patient.created"] == 40
    new_holder = (await redis.get(f"{ns.prefix}:{{main}}:lock") or b"").decode()
    assert f":{waiting.proc.pid}:" in new_holder   # type: ignore[union-attr]
    assert int(new_holder.partition(":")[0]) > int(holder.partition(":")[0])
    assert waiting.alive()
    status = json.loads((await anyio.run_process(
        [sys.executable, "-m", "notifier", "status", "--json", "--config",
         str(waiting.config)])).stdout)
    lease = status["practices"][0]["lease"]
    assert f":{waiting.proc.pid}:" in lease["holder"]   # type: ignore[union-attr]
    assert lease["epoch"] == int(new_holder.partition(":")[0])


async def test_a_paused_writer_that_wakes_after_a_takeover_commits_nothing(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """The case a lease alone cannot handle: a daemon frozen mid-backfill (SIGSTOP: a GC
    pause, a stalled VM) past its lease, another takes over, then the first wakes up with
    pages in hand. Its commits carry a stale fencing token and are refused."""
    await control.seed("patients", 1500, spread_days=30)
    await control.quirks(latency=0.01)
    a = daemon_factory(resources=["patients"], initial_sync="emit", per_page=50)
    b = daemon_factory(resources=["patients"], initial_sync="emit", per_page=50)
    a.start()

    async def some() -> bool:
        return await redis.xlen(ns.stream) >= 200
    await wait_until(some, 20, "a's backfill under way")
    a.signal(signal.SIGSTOP)
    b.start()
    await anyio.sleep(4)             # a's lease (1.5 s) expired; b took over
    a.signal(signal.SIGCONT)

    async def done() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(done, 60, "the backfill, finished by b")
    await anyio.sleep(1)
    evs = await stream_events(redis, ns.stream)
    assert len({e["id"] for e in evs}) == len(evs), "both writers committed a page"
    assert Counter(e["type"] for e in evs)["patient.created"] == 1500
    assert a.alive() and b.alive()
    log = a.log.read_text()
    assert "lost the practice lease to another daemon" in log
