"""Several practices in the config that use one API key: one budget, one lifecycle."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until

WINDOW = 2.0
SHARE = 20   # requests per window for the key


def of(evs: list[dict[str, Any]], type_: str, practice: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == type_ and e["data"]["practice"] == practice]


async def test_practices_sharing_a_key_share_its_budget(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """Two sites of one Dentally user, each backfilling 1,000 patients: together they
    stay within the one share the key has, instead of spending it twice."""
    await control.quirks(rate_window=WINDOW, rate_limit=200)
    await control.add_key("shared")
    await control.seed("patients", 1000, spread_days=100)
    per_hour = int(SHARE * 3600 / WINDOW)
    d = daemon_factory(key="shared", resources=["patients"], initial_sync="emit",
                       per_page=50, rate_window=WINDOW, max_requests_per_hour=per_hour,
                       intervals={"patients": 5.0},
                       more_practices=[{"name": "site2", "api_key": "shared",
                                        "resources": ["patients"], "initial_sync": "emit",
                                        "per_page": 50, "rate_window": WINDOW,
                                        "max_requests_per_hour": per_hour,
                                        "intervals": {"patients": 5.0}}])
    d.start()

    async def both_synced() -> bool:
        return all([await redis.hget(f"{ns.prefix}:{{{p}}}:cursor:patients", "synced")
                    == b"1" for p in ("main", "site2")])
    await wait_until(both_synced, 60, "both backfills")
    per_window = (await control.stats())["per_window"]["1"]
    # 40+ page requests per practice: with a budget each, windows would carry ~2 x SHARE.
    assert max(per_window.values()) <= SHARE + 2, per_window
    assert len(per_window) >= 3   # 44 requests at 20 a window
    evs = await stream_events(redis, ns.stream)
    assert len(of(evs, "patient.created", "main")) == 1000
    assert len(of(evs, "patient.created", "site2")) == 1000


async def test_practices_sharing_a_key_share_its_lifecycle(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.add_key("shared")
    ids = await control.seed("patients", 10)
    d = daemon_factory(key="shared", resources=["patients"], key_probe_interval=3600,
                       more_practices=[{"name": "site2", "api_key": "shared",
                                        "resources": ["patients"],
                                        "key_probe_interval": 3600}])
    d.start()

    async def both_synced() -> bool:
        return all([await redis.hget(f"{ns.prefix}:{{{p}}}:cursor:patients", "synced")
                    == b"1" for p in ("main", "site2")])
    await wait_until(both_synced, 20, "both practices synced")
    probes_before = (await control.stats())["requests"]["shared"]
    await control.key("shared", "revoke")
    await control.mutate("patients", ids=[ids[0]])

    async def both_revoked() -> bool:
        evs = await stream_events(redis, ns.stream)
        return all(of(evs, "notifier.key.revoked", p) for p in ("main", "site2"))
    await wait_until(both_revoked, 20, "the revocation, for both practices")
    await anyio.sleep(1.5)
    stats = await control.stats()
    # One confirming probe for the key, not one per practice; the lists that met the 401.
    assert stats["rejected"]["shared"] <= 3, stats["rejected"]
    await control.key("shared", "restore")
    done = await anyio.run_process([sys.executable, "-m", "notifier", "key", "retry",
                                    "main", "--config", str(d.config)], check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    async def both_back() -> bool:
        evs = await stream_events(redis, ns.stream)
        return all(of(evs, "notifier.key.restored", p) and of(evs, "patient.updated", p)
                   for p in ("main", "site2"))
    await wait_until(both_back, 20, "both practices restored by one retry")
    evs = await stream_events(redis, ns.stream)
    for p in ("main", "site2"):
        assert len(of(evs, "notifier.key.revoked", p)) == 1
        assert len(of(evs, "notifier.key.restored", p)) == 1
    assert (await control.stats())["requests"]["shared"] > probes_before
