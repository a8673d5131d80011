"""Hints benchmark: Dentally's webhooks as hints against polling alone, in one run.

1. latency: the same sandbox changes watched by two practices of one daemon, one taking
   the sandbox's Dentally-style webhooks as hints, one polling alone, both every
   ``--interval`` seconds. Latency is from the sandbox write to the event's arrival in the
   Redis stream (same host, one clock). Aims: with hints p50 < 1.5 s and p99 < 3 s;
   without them about 50% of the poll interval.
2. idle cost: Dentally requests per idle resource, with hints healthy (backstop polls)
   against polling alone, at the default intervals (60 s and ``backstop_interval`` 300 s)
   scaled down by ``--scale`` so the run is short. Aim: at most 1/5.

The sandbox runs in a thread of this process, the daemon in this event loop. Redis is
``REDIS_URL`` or an embedded Valkey.
Usage: python bench/hints.py [--changes N] [--interval S] [--idle S] [--scale K]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier import config
from notifier.core.timefmt import parse_ms
from notifier.ops.embedded import redis_server
from notifier.ops.http import free_port
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.service import daemon
from notifier.store.connection import delete_prefix

SECRET = "bench-dentally-secret"


def settings_for(redis_url: str, tag: str, base_url: str, port: int, interval: float,
                 backstop: float) -> config.Settings:
    common = {"region": "sandbox", "base_url": base_url, "resources": ["patients"],
              "poll_interval": interval, "overlap": 5, "rate_window": 60,
              "max_requests_per_hour": 360_000, "max_requests_per_second": 100}
    return config.parse({
        "redis": {"url": redis_url, "stream": f"bench-hints-{tag}:events",
                  "prefix": f"bench-hints-{tag}"},
        "practices": [
            {"name": "hinted", "api_key": "hinted", "webhook_secret": SECRET,
             "backstop_interval": backstop, **common},
            {"name": "plain", "api_key": "plain", **common}],
        "ingest": {"listen": f"127.0.0.1:{port}"},
    }, "bench")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def with_daemon(settings: config.Settings,
                      body: Callable[[Redis], Awaitable[Any]]) -> Any:
    redis = Redis.from_url(settings.redis.url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(daemon.run, settings, False, store_warnings=False))
            result = await body(redis)
            tg.cancel_scope.cancel()
        return result
    finally:
        with anyio.CancelScope(shield=True):
            await delete_prefix(redis, settings.redis.prefix)
            await redis.delete(settings.redis.stream)
            await redis.aclose()


async def synced(redis: Redis, settings: config.Settings) -> None:
    for practice in ("hinted", "plain"):
        key = f"{settings.redis.prefix}:{{{practice}}}:cursor:patients"
        while await redis.hget(key, "synced") != b"1":  # noqa: ASYNC110 (Redis, no event)
            await anyio.sleep(0.1)


async def latency(redis_url: str, sb: SandboxThread, control: SandboxControl,
                  changes: int, interval: float) -> dict[str, list[float]]:
    port = free_port()
    await control.dentally_webhooks(url=f"http://127.0.0.1:{port}/dentally/hinted",
                                    secret=SECRET)
    settings = settings_for(redis_url, uuid.uuid4().hex[:8], sb.url, port, interval,
                            backstop=interval)
    ids = [str(r["id"]) for r in await control.records("patients")]

    async def body(redis: Redis) -> dict[str, list[float]]:
        await synced(redis, settings)
        out: dict[str, list[float]] = {"hinted": [], "plain": []}
        last = "$"
        expected = 2 * changes

        async def read() -> None:
            nonlocal last
            seen = 0
            while seen < expected:
                reply = await redis.xread({settings.redis.stream: last}, block=1000)
                now = time.time()
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        event = json.loads(fields[b"payload"])
                        data = event["data"]
                        if "updated_at" not in data:
                            continue
                        out[data["practice"]].append(now - parse_ms(data["updated_at"]) / 1000)
                        seen += 1

        rng = random.Random(1)
        with anyio.fail_after(60 + changes * (interval + 2)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                for _ in range(changes):
                    # one change at a time: a poll must not fold two into one event
                    await control.mutate("patients", ids=[rng.choice(ids)])
                    await anyio.sleep(rng.uniform(0.5, 1.0) * interval / 4 + 0.2)
        return out

    result: dict[str, list[float]] = await with_daemon(settings, body)
    await control.dentally_webhooks(url="")
    return result


async def idle_cost(redis_url: str, sb: SandboxThread, control: SandboxControl,
                    idle: float, scale: float) -> tuple[float, float]:
    port = free_port()
    await control.dentally_webhooks(url=f"http://127.0.0.1:{port}/dentally/hinted",
                                    secret=SECRET)
    settings = settings_for(redis_url, uuid.uuid4().hex[:8], sb.url, port, 60 / scale,
                            backstop=300 / scale)

    async def body(redis: Redis) -> tuple[float, float]:
        await synced(redis, settings)
        await control.mutate("patients", count=1)     # one hint: the webhook is healthy
        await anyio.sleep(2)
        before = dict((await control.stats())["requests"])
        await anyio.sleep(idle)
        after = (await control.stats())["requests"]
        per_hour = 3600 / idle / scale    # requests in the idle window -> per real hour
        return ((after["hinted"] - before.get("hinted", 0)) * per_hour,
                (after["plain"] - before.get("plain", 0)) * per_hour)

    result: tuple[float, float] = await with_daemon(settings, body)
    await control.dentally_webhooks(url="")
    return result


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    with redis_server() as redis_url, SandboxThread() as sb:
        sb.sandbox.add_key("hinted")
        sb.sandbox.add_key("plain")
        control = SandboxControl(sb.url)
        await control.seed("patients", 200, 30)
        lat = await latency(redis_url, sb, control, args.changes, args.interval)
        h, p = lat["hinted"], lat["plain"]
        print(f"latency, sandbox change -> stream, {args.changes} changes, "
              f"poll interval {args.interval:g} s:")
        for name, values in (("with hints", h), ("polling alone", p)):
            print(f"  {name:14} p50 {pct(values, 0.5):6.2f} s   p99 {pct(values, 0.99):6.2f} s"
                  f"   mean {statistics.fmean(values):6.2f} s"
                  f" ({statistics.fmean(values) / args.interval:.0%} of the interval)")
        print(f"  ratio with/without hints: p50 {pct(h, 0.5) / pct(p, 0.5):.3f}, "
              f"p99 {pct(h, 0.99) / pct(p, 0.99):.3f}   "
              f"(aims: p50 < 1.5 s, p99 < 3 s with hints)")
        hinted, plain = await idle_cost(redis_url, sb, control, args.idle, args.scale)
        print(f"idle resource, requests per hour at the default intervals (60 s; backstop "
              f"300 s), measured {args.idle:g} s scaled by {args.scale:g}:")
        print(f"  with hints healthy {hinted:6.1f}/h   polling alone {plain:6.1f}/h   "
              f"ratio {hinted / plain:.3f} (aim: <= 0.2)")
        await control.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=40.0)
    parser.add_argument("--scale", type=float, default=30.0)
    anyio.run(main, parser.parse_args())
