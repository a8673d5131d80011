"""Ingest benchmark: backfill throughput, idle poll cost, and snapshot memory.

Every figure is a ratio against a baseline measured in the same run, because the machines
are shared and noisy:

1. backfill: 100,000 patients from the sandbox into the stream (``emit`` mode) against a
   bare httpx loop that fetches the same pages and XADDs each record with a pipeline
   (aim: at least 0.6);
2. idle poll: one poll cycle with nothing changed, 100,000 tracked records against 1,000
   (aim: at most 1.2, since idle cost must grow with changes, not with size);
3. memory: Redis bytes per tracked record against the record's JSON size (aim: at most 0.4).

The sandbox runs in its own process. Redis is ``REDIS_URL`` or an embedded Valkey.
Usage: python bench/ingest.py [--records N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier.core import resources
from notifier.core.cursor import Policy
from notifier.dentally.client import USER_AGENT, DentallyClient
from notifier.events import canonical
from notifier.ops.embedded import redis_server
from notifier.service.poller import ResourcePoller
from notifier.store.connection import delete_prefix
from notifier.store.keys import Keys
from notifier.store.redis import Store

KEY = "bench-key"


@contextlib.contextmanager
def sandbox_process(patients: int, invoices: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier", "sandbox", "--port", "0", "--key", KEY,
         "--patients", str(patients), "--invoices", str(invoices), "--appointments", "0",
         "--payments", "0", "--spread-days", "1000"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            raise RuntimeError(f"sandbox did not start: {line}{proc.stderr.read()}")
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(10)


async def baseline(url: str, redis: Redis, stream: str, per_page: int) -> tuple[int, float]:
    """Fetch every page with bare httpx and XADD each record with a pipeline."""
    n = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers={
            "User-Agent": USER_AGENT, "Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        page = 1
        while True:
            body = (await c.get("/v1/patients", params={"page": page,
                                                        "per_page": per_page})).json()
            rows = body["patients"]
            pipe = redis.pipeline(transaction=False)
            for row in rows:
                pipe.xadd(stream, {"id": str(row["id"]), "payload": json.dumps(row)})
            await pipe.execute()
            n += len(rows)
            if len(rows) < per_page:
                break
            page += 1
    return n, time.perf_counter() - started


async def idle_polls(big: ResourcePoller, small: ResourcePoller,
                     rounds: int) -> tuple[float, float]:
    """Median idle poll times, alternating the two so that drift hits both alike."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for i, poller in enumerate((big, small)):
            t = time.perf_counter()
            published = await poller.poll_once()
            times[i].append(time.perf_counter() - t)
            assert published == 0, "an idle poll published events"
    return statistics.median(times[0]), statistics.median(times[1])


async def drop(redis: Redis, prefix: str) -> None:
    await delete_prefix(redis, prefix)


async def main(records: int, small: int) -> None:
    with redis_server() as redis_url, sandbox_process(records, small) as url:
        redis = Redis.from_url(redis_url)
        info = await redis.info("server")
        server = f"valkey {info['valkey_version']}" if "valkey_version" in info else \
            f"redis {info['redis_version']}"
        async with httpx.AsyncClient() as c:
            await c.post(url + "/_sandbox/quirks", json={"rate_limit": 10**9})
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            policy = Policy()
            n_base, t_base = await baseline(url, redis, f"{prefix}:baseline", policy.per_page)
            store = Store(redis, Keys(prefix), f"{prefix}:events")
            client = DentallyClient(url, KEY, timeout=60)
            poller = ResourcePoller(store, client, "bench", resources.get("patients"),
                                    policy, initial_sync="emit")
            t = time.perf_counter()
            published = await poller.poll_once()
            t_ours = time.perf_counter() - t
            assert published == records == n_base, (published, records, n_base)
            rate_ours, rate_base = records / t_ours, n_base / t_base
            print(f"backfill {records:,} patients ({server}): notifier {rate_ours:,.0f} rec/s "
                  f"({poller.pages} requests), baseline {rate_base:,.0f} rec/s "
                  f"-> ratio {rate_ours / rate_base:.2f} (aim >= 0.6)")

            small_poller = ResourcePoller(store, client, "bench", resources.get("invoices"),
                                          policy, initial_sync="seed")
            await small_poller.poll_once()
            rounds = 60
            t_big, t_small = await idle_polls(poller, small_poller, rounds)
            print(f"idle poll (median of {rounds}): {records:,} tracked {t_big * 1000:.2f} ms, "
                  f"{small:,} tracked {t_small * 1000:.2f} ms -> ratio {t_big / t_small:.2f} "
                  "(aim <= 1.2)")

            snap_key = store.keys.snapshots("bench", "patients")
            used = await redis.memory_usage(snap_key, samples=0) or 0
            used += await redis.memory_usage(store.keys.zdict("bench", "patients")) or 0
            count = await redis.hlen(snap_key)
            sizes = []
            async with httpx.AsyncClient(base_url=url, headers={
                    "User-Agent": USER_AGENT, "Authorization": f"Bearer {KEY}"}) as c:
                for page in (1, 300, 700):
                    rows = (await c.get("/v1/patients", params={"page": page,
                                                                "per_page": 100})).json()
                    sizes += [len(canonical(r)) for r in rows["patients"]]
            per_record, json_size = used / count, statistics.mean(sizes)
            print(f"memory ({server}): {per_record:.0f} B per tracked record, record JSON "
                  f"{json_size:.0f} B -> ratio {per_record / json_size:.2f} (aim <= 0.4)")
            await client.aclose()
        finally:
            await drop(redis, prefix)
            await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    args = parser.parse_args()
    anyio.run(main, args.records, args.small)
