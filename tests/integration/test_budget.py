"""The rate budget against the sandbox's fixed window, made short (2 s) for the test."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import httpx
from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until

WINDOW = 2.0
SHARE = 20   # per window: max_requests_per_hour = SHARE * 3600 / WINDOW


async def test_share_is_never_exceeded_and_steady_polls_keep_their_pace(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.quirks(rate_window=WINDOW, rate_limit=60)
    # 2,500 rows need 50+ page requests: more than two windows of 20 can carry.
    await control.seed("patients", 2500, spread_days=100)
    appts = await control.seed("appointments", 5)
    daemon = daemon_factory(resources=["patients", "appointments"], initial_sync="emit",
                            per_page=50, rate_window=WINDOW,
                            max_requests_per_hour=int(SHARE * 3600 / WINDOW),
                            intervals={"patients": 0.5, "appointments": 0.5})
    daemon.start()

    async def appointments_synced() -> bool:
        raw = await redis.hget(f"{ns.prefix}:{{main}}:cursor:appointments", "synced")
        return raw == b"1"
    await wait_until(appointments_synced, 20, "appointments synced")
    lags = []
    for rid in appts:  # while the patient backfill runs, appointment changes stay prompt
        changed_at = time.time()
        await control.mutate("appointments", ids=[rid])

        async def published(rid: str = rid) -> bool:
            return any(e["type"] == "appointment.updated" and e["data"]["record_id"] == rid
                       for e in await stream_events(redis, ns.stream))
        await wait_until(published, 10, "the appointment update")
        lags.append(time.time() - changed_at)

    async def backfilled() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(backfilled, 60, "the patient backfill")
    per_window = (await control.stats())["per_window"]["1"]
    assert max(per_window.values()) <= SHARE, per_window
    assert len(per_window) >= 3  # the backfill really was spread over several windows
    assert max(lags) < 2.5, lags


async def test_recovers_after_a_403_at_zero_and_after_a_429(
        redis: Redis, ns: Namespace, control: SandboxControl, sandbox: SandboxThread,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.quirks(rate_window=WINDOW, rate_limit=30)
    await control.add_key("other-integration")  # the same Dentally user: one budget
    ids = await control.seed("patients", 20)
    daemon = daemon_factory(resources=["patients"], rate_window=WINDOW,
                            max_requests_per_hour=int(SHARE * 3600 / WINDOW))
    daemon.start()

    async def synced() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(synced, 20, "the first sync")
    for status in (403, 429):
        await control.quirks(rate_limit_status=status)
        async with httpx.AsyncClient(base_url=sandbox.url, headers={
                "User-Agent": "other", "Authorization": "Bearer other-integration"}) as c:
            for _ in range(40):  # another integration spends the whole window
                await c.get("/v1/user")
        rid = ids.pop()
        await control.mutate("patients", ids=[rid])

        async def published(rid: str = rid) -> bool:
            return any(e["data"]["record_id"] == rid
                       for e in await stream_events(redis, ns.stream))
        await wait_until(published, 15, f"recovery after {status}")
    await anyio.lowlevel.checkpoint()
