"""kill -9 at random moments during a backfill with changes flowing: nothing lost, nothing
published twice."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until

RECORDS = 5000
KILLS = 10


def by_record(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        out[e["data"]["record_id"]].append(e)
    return out


async def test_kill_9_during_backfill_loses_and_duplicates_nothing(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    rng = random.Random(2026)
    seeded = await control.seed("patients", RECORDS, spread_days=400)
    await control.quirks(latency=0.01)
    # Each restart waits for the killed daemon's lease to expire: keep that short here.
    daemon = daemon_factory(resources=["patients"], initial_sync="emit", per_page=50,
                            window_rows=1000, overlap=2, practice_lease=0.6)
    untouched = list(seeded)
    rng.shuffle(untouched)
    mutated: set[str] = set()
    created: set[str] = set()
    changing = True

    async def keep_changing() -> None:
        while changing:
            batch = [untouched.pop() for _ in range(min(3, len(untouched)))]
            await control.mutate("patients", ids=batch)   # each record changes once
            mutated.update(batch)
            if rng.random() < 0.2:
                created.add(str((await control.create("patients"))["id"]))
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_changing)
        for _ in range(KILLS):
            daemon.start()
            await anyio.sleep(rng.uniform(0.6, 2.5))
            assert daemon.alive(), daemon.log.read_text()[-2000:]
            daemon.kill9()
        changing = False
    daemon.start()

    final = {str(r["id"]): r for r in await control.records("patients")}
    assert len(final) == RECORDS + len(created)

    async def caught_up() -> bool:
        events = await stream_events(redis, ns.stream)
        last = {rid: evs[-1]["data"]["record"] for rid, evs in by_record(events).items()}
        return all(last.get(rid) == rec for rid, rec in final.items())

    await wait_until(caught_up, 90, "the stream to hold every record's final state")
    await anyio.sleep(1.0)
    events = await stream_events(redis, ns.stream)
    assert daemon.starts == KILLS + 1
    assert len({e["id"] for e in events}) == len(events), "an event was published twice"
    records = by_record(events)
    assert set(records) == set(final)
    for rid, evs in records.items():
        kinds = [e["type"] for e in evs]
        assert kinds[0] == "patient.created" and kinds.count("patient.created") == 1, rid
        assert kinds.count("patient.updated") <= (1 if rid in mutated else 0), (rid, kinds)
        assert evs[-1]["data"]["record"] == final[rid]
        if len(evs) == 2:  # the backfill read the old version: one update, to the new one
            assert evs[0]["data"]["record"] != final[rid]
    updates = sum(len(evs) - 1 for evs in records.values())
    assert len(events) == len(final) + updates
    assert len(mutated) > 100 and updates > 0
