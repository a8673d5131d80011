"""Delivery through the daemon as a real process, and the operator commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.service import retention
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until
from tests.receiver import Receiver, Reply
from tests.test_cli import run_cli as cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def subscriber(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "crm", "url": url, "secret": SECRET, "allow_private": True,
            "start": "beginning", "retry_schedule": [0.05, 0.05], **kw}


async def stream_ids(redis: Redis, stream: str) -> set[str]:
    return {f[b"id"].decode() for _, f in await redis.xrange(stream)
            if not f[b"type"].startswith(b"notifier.")}


async def test_kill_9_during_delivery_loses_no_event(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 300, spread_days=10)
    with Receiver(lambda r, n: Reply(hang=0.01)) as rx:
        daemon = daemon_factory(resources=["patients"], initial_sync="emit",
                                subscribers=[subscriber(rx.url, max_in_flight=4)])
        daemon.start()

        async def some() -> bool:
            return len(rx.received) >= 60
        await wait_until(some, 30, "the first deliveries")
        daemon.kill9()
        before = len(set(rx.ids()))
        daemon.start()
        expected = await stream_ids(redis, ns.stream)
        assert len(expected) == 300

        async def all_in() -> bool:
            return set(rx.ids()) >= expected
        await wait_until(all_in, 60, "every event delivered after the restart")
    assert before < 300
    assert set(rx.ids()) == expected
    assert SECRET not in daemon.log.read_text()


async def test_dead_letters_are_redelivered_by_the_command(
        tmp_path: Path, redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon], redis_url: str,
        sandbox: SandboxThread) -> None:
    await control.seed("patients", 3, spread_days=1)
    healthy = False
    with Receiver(lambda r, n: Reply(200 if healthy else 500)) as rx:
        daemon = daemon_factory(resources=["patients"], initial_sync="emit",
                                subscribers=[subscriber(rx.url)])
        daemon.start()
        dead_key = f"{ns.prefix}:sub:crm:dead"

        async def dead() -> bool:
            return await redis.xlen(dead_key) == 3
        await wait_until(dead, 30, "3 dead letters")
        assert len(rx.received) == 9  # 3 attempts each
        daemon.stop()
        healthy = True
        one = json.loads((await redis.xrange(dead_key, count=1))[0][1][b"payload"])["id"]
        done = cli("redeliver", "crm", "--config", str(daemon.config), "--id", one)
        assert done.returncode == 0, done.stdout + done.stderr
        assert rx.ids()[-1] == one and await redis.xlen(dead_key) == 2
        done = cli("redeliver", "crm", "--config", str(daemon.config))
        assert done.returncode == 0 and "redelivered 2 of 2" in done.stdout
        assert await redis.xlen(dead_key) == 0
        assert len(set(rx.ids())) == 3
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
        done = cli("redeliver", "crm", "--config", str(daemon.config), "--since", since)
        assert "redelivered 3 of 3" in done.stdout


async def test_subscriber_enable_and_status(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 2, spread_days=1)
    gone = True
    with Receiver(lambda r, n: Reply(410 if gone else 200)) as rx:
        daemon = daemon_factory(resources=["patients"], initial_sync="emit",
                                subscribers=[subscriber(rx.url, max_in_flight=1)])
        daemon.start()

        async def disabled() -> bool:
            return await redis.hget(f"{ns.prefix}:sub:crm:state", "disabled") == b"1"
        await wait_until(disabled, 30, "the 410 to disable the subscriber")
        status = cli("status", "--config", str(daemon.config))
        assert "subscriber crm: DISABLED" in status.stdout and "410" in status.stdout
        gone = False
        done = cli("subscriber", "enable", "crm", "--config", str(daemon.config))
        assert done.returncode == 0 and "enabled" in done.stdout

        async def delivered() -> bool:
            return len(set(rx.ids())) >= 2
        await wait_until(delivered, 30, "delivery after enable")
        data = json.loads(cli("status", "--config", str(daemon.config), "--json").stdout)
    assert data["subscribers"][0]["enabled"] is True
    assert data["practices"][0]["resources"][0]["synced"] is True
    assert data["practices"][0]["resources"][0]["tracked"] == 2
    assert SECRET not in json.dumps(data)


async def test_trimming_never_removes_what_a_lagging_subscriber_needs(
        redis: Redis, ns: Namespace) -> None:
    now = time.time()
    old = int((now - 7200) * 1000)
    for i in range(10):  # ten events, two hours old
        await redis.xadd(ns.stream, {"id": f"e{i}", "type": "patient.updated"},
                         id=f"{old + i}-0")
    await redis.xgroup_create(ns.stream, "lagging", id="0")
    await redis.xgroup_create(ns.stream, "fast", id="$")
    assert await retention.trim(redis, ns.stream, {"lagging", "fast"}, 3600, now) == 0
    got: Any = await redis.xreadgroup("lagging", "c", {ns.stream: ">"}, count=4)
    ids = [e[0] for e in got[0][1]]
    await redis.xack(ns.stream, "lagging", *ids[:3])  # the 4th stays pending
    assert await retention.trim(redis, ns.stream, {"lagging", "fast"}, 3600, now) == 3
    assert await redis.xlen(ns.stream) == 7
    # A subscriber that is disabled (left out of the set) does not hold the stream back.
    assert await retention.trim(redis, ns.stream, {"fast"}, 3600, now) == 7
