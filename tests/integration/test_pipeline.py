"""The daemon as a real process: sandbox -> poller -> diff -> Redis stream."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from notifier.core.timefmt import parse_ms
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until


async def events_of(redis: Redis, ns: Namespace) -> list[dict[str, Any]]:
    return await stream_events(redis, ns.stream)


async def settle(redis: Redis, ns: Namespace, expected: int, what: str,
                 timeout: float = 30) -> list[dict[str, Any]]:
    """Wait for ``expected`` events, then make sure no extra one follows."""
    async def enough() -> bool:
        return await redis.xlen(ns.stream) >= expected
    await wait_until(enough, timeout, what)
    await anyio.sleep(1.0)  # several more polls: anything extra would show now
    events = await events_of(redis, ns)
    assert len(events) == expected, Counter(e["type"] for e in events)
    assert len({e["id"] for e in events}) == expected
    return events


async def synced(redis: Redis, ns: Namespace, resource: str = "patients") -> bool:
    raw = await redis.hget(f"{ns.prefix}:{{main}}:cursor:{resource}", "synced")
    return raw == b"1"


async def test_creates_and_updates_become_exactly_one_event_each(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    patients = await control.seed("patients", 40, spread_days=20)
    await control.seed("appointments", 15, spread_days=20)
    daemon = daemon_factory(initial_sync="emit", resources=["patients", "appointments"])
    daemon.start()
    events = await settle(redis, ns, 55, "the backfill")
    assert Counter(e["type"] for e in events) == {"patient.created": 40,
                                                  "appointment.created": 15}

    new = [await control.create("patients", first_name=f"New{i}") for i in range(5)]
    changed = await control.mutate("patients", ids=random.sample(patients, 10))
    appts = await control.mutate("appointments", count=4)
    events = (await settle(redis, ns, 55 + 19, "the changes"))[55:]
    kinds = Counter((e["type"], e["data"]["record_id"]) for e in events)
    assert all(n == 1 for n in kinds.values())
    assert {rid for t, rid in kinds if t == "patient.created"} == {str(r["id"]) for r in new}
    assert {rid for t, rid in kinds if t == "patient.updated"} == set(changed)
    assert {rid for t, rid in kinds if t == "appointment.updated"} == set(appts)
    current = {str(r["id"]): r for r in await control.records("patients")}
    for e in events:
        if e["type"] == "patient.updated":
            assert e["data"]["record"] == current[e["data"]["record_id"]]


async def test_300_records_sharing_one_updated_at_across_pages(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 10, spread_days=3)
    daemon = daemon_factory(resources=["patients"], window_rows=100)
    daemon.start()
    await wait_until(lambda: synced(redis, ns), 20, "the first sync")
    now = (await control.clock())["now_ms"]
    ids = await control.seed("patients", 300, at_ms=now)  # one updated_at, 3+ pages
    events = await settle(redis, ns, 300, "300 records with one timestamp")
    assert {e["data"]["record_id"] for e in events} == set(ids)
    assert {parse_ms(e["data"]["updated_at"]) for e in events} == {now}


async def test_records_updated_while_paging_are_all_published(
        redis: Redis, ns: Namespace, control: SandboxControl, sandbox: SandboxThread,
        daemon_factory: Callable[..., Daemon]) -> None:
    """Rows move between pages while the daemon pages (order by updated_at, slow pages,
    no overlap to hide a skipped row): every update must still be published once."""
    ids = await control.seed("patients", 600, spread_days=30)
    daemon = daemon_factory(resources=["patients"], per_page=25, overlap=0)
    daemon.start()
    await wait_until(lambda: synced(redis, ns), 30, "the first sync")
    await control.quirks(order="updated_at", latency=0.01)
    chosen = random.Random(5).sample(ids, 250)
    for i in range(0, len(chosen), 10):
        await control.mutate("patients", ids=chosen[i:i + 10])
        await anyio.sleep(0.03)
    events = await settle(redis, ns, 250, "250 updates", timeout=60)
    assert Counter(e["type"] for e in events) == {"patient.updated": 250}
    assert {e["data"]["record_id"] for e in events} == set(chosen)


async def test_server_clock_behind_ours_loses_nothing(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """Cursors follow the server's clock: three hours behind ours, nothing is skipped."""
    await control.clock(offset_ms=-3 * 3_600_000)
    await control.seed("patients", 30, spread_days=2)
    daemon = daemon_factory(resources=["patients"], overlap=1)
    daemon.start()
    await wait_until(lambda: synced(redis, ns), 20, "the first sync")
    changed = await control.mutate("patients", count=5)
    made = await control.create("patients")
    events = await settle(redis, ns, 6, "changes on a lagging server")
    assert {e["data"]["record_id"] for e in events} == set(changed) | {str(made["id"])}
    await control.clock(offset_ms=3 * 3_600_000)  # the server's clock jumps ahead
    changed = await control.mutate("patients", count=3)
    events = (await settle(redis, ns, 9, "changes after the jump"))[6:]
    assert {e["data"]["record_id"] for e in events} == set(changed)


async def test_a_second_daemon_waits_instead_of_publishing_twice(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 150, spread_days=5)
    first = daemon_factory(resources=["patients"], initial_sync="emit")
    second = daemon_factory(resources=["patients"], initial_sync="emit")
    first.start()
    second.start()
    await settle(redis, ns, 150, "the backfill")
    await control.mutate("patients", count=20)
    await settle(redis, ns, 170, "the updates")
    logs = first.log.read_text() + second.log.read_text()
    assert "the practice's lease is held by" in logs   # the second one says it waits


async def test_deletions_are_published_by_the_periodic_sweep(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 80, spread_days=5)
    daemon = daemon_factory(resources=["patients"], reconcile_interval=0.5)
    daemon.start()
    await wait_until(lambda: synced(redis, ns), 20, "the first sync")
    for rid in ids[:3]:
        await control.delete("patients", rid)
    events = await settle(redis, ns, 3, "three deletions")
    assert {e["data"]["record_id"] for e in events} == set(ids[:3])
    assert {e["type"] for e in events} == {"patient.deleted"}
