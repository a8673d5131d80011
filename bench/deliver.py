"""Delivery benchmark: sustained webhook deliveries per second, and latency.

Ratios in one run against a baseline of bare httpx POSTs of the same bodies at the same
concurrency, to the same fast local receiver (its own process):

1. throughput with 1 subscriber, and with 10 (aim: at least 0.7 of the baseline);
2. latency from XADD to receipt with 1 subscriber, p50 and p99 (aim: p50 under 20 ms);
3. throughput with filters and shaping on (a deny-list, a ``changed`` filter that every
   event passes, a site filter, CloudEvents) against the same subscriber without them, on
   whole patient records, runs interleaved (aim: at least 0.9).

Redis is ``REDIS_URL`` or an embedded Valkey. Usage: python bench/deliver.py [--events N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier import signing
from notifier.config import SubscriberConfig
from notifier.delivery.sender import NODELAY
from notifier.events import Event, record_event
from notifier.ops.embedded import redis_server
from notifier.ops.http import free_port
from notifier.sandbox.fake import Faker
from notifier.service.delivery import SubscriberWorker
from notifier.store.connection import client, delete_prefix
from notifier.store.keys import Keys
from notifier.store.redis import Store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
IN_FLIGHT = 8


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "receiver.py"),
                             str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/stats", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def events(n: int) -> list[Event]:
    now = datetime.now(UTC)
    return [record_event("bench", "patients", "updated",
                         {"id": i, "email_address": f"p{i}@example.com",
                          "updated_at": "2026-11-27T10:00:00.000+00:00"}, now,
                         {"email_address": ["old@example.com", f"p{i}@example.com"]})
            for i in range(n)]


async def stats(c: httpx.AsyncClient, url: str) -> dict[str, float]:
    return dict((await c.get(url + "/stats")).json()["first"])


async def reset(c: httpx.AsyncClient, url: str) -> None:
    await c.post(url + "/reset")


async def baseline(url: str, evs: list[Event], concurrency: int, copies: int) -> float:
    """Bare signed httpx POSTs of the same bodies at the same concurrency; deliveries/s."""
    work = [e for _ in range(copies) for e in evs]
    limiter = anyio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=NODELAY)
    async with httpx.AsyncClient(limits=limits, timeout=30, transport=transport) as c:
        async def post(e: Event) -> None:
            async with limiter:
                h = signing.headers([SECRET], e.id, int(time.time()), e.payload)
                r = await c.post(url + "/hook", content=e.payload, headers=h)
                assert r.status_code == 204

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for e in work:
                tg.start_soon(post, e)
        return len(work) / (time.perf_counter() - started)


def patient_events(n: int) -> list[Event]:
    """Updates of whole patient records (the sandbox's shape), each changing the email."""
    fake = Faker(7)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        record = {"id": i, **fake.patient(), "site_id": "site-a",
                  "updated_at": "2026-11-27T10:00:00.000+00:00"}
        out.append(record_event("bench", "patients", "updated", record, now,
                                {"email_address": ["old@example.com",
                                                   record["email_address"]],
                                 "updated_at": ["2026-11-27T09:00:00.000+00:00",
                                                record["updated_at"]]}))
    return out


SHAPING: dict[str, Any] = {
    "exclude_fields": ["date_of_birth", "nhs_number", "medical_alert", "mobile_phone",
                       "home_phone", "gender", "ethnicity"],
    "changed": ["patient.email_address", "appointment.state"],
    "sites": ["site-a", "site-b"], "format": "cloudevents",
}


def subscriber(name: str, url: str, **kw: Any) -> SubscriberConfig:
    return SubscriberConfig(name=name, url=url + "/hook", secret=SECRET,
                            allow_private=True, start="beginning",
                            max_in_flight=IN_FLIGHT, **kw)


async def ours(redis: Redis, url: str, evs: list[Event], subs: int, **kw: Any) -> float:
    """Deliveries/s of ``subs`` subscribers draining a pre-filled stream."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = Store(redis, Keys(prefix), f"{prefix}:events")
    try:
        pipe = redis.pipeline(transaction=False)
        for e in evs:
            pipe.xadd(store.stream, dict(e.stream_fields()))
        await pipe.execute()
        workers = [SubscriberWorker(redis, store.keys, store,
                                    subscriber(f"s{i}", url, **kw), regions={"bench": "uk"})
                   for i in range(subs)]
        total = len(evs) * subs
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in workers:
                tg.start_soon(w.run)
            while True:
                done = 0
                for i in range(subs):
                    info = await redis.xinfo_groups(store.stream)
                    g = next((x for x in info if x["name"] in (f"s{i}", f"s{i}".encode())),
                             None)
                    if g and g["lag"] == 0 and g["pending"] == 0:
                        done += 1
                if done == subs:
                    break
                await anyio.sleep(0.01)
            elapsed = time.perf_counter() - started
            tg.cancel_scope.cancel()
        return total / elapsed
    finally:
        await delete_prefix(redis, prefix)


async def latency(redis: Redis, url: str, n: int) -> tuple[float, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = Store(redis, Keys(prefix), f"{prefix}:events")
    sent: dict[str, float] = {}
    try:
        async with httpx.AsyncClient() as c:
            await reset(c, url)
            await redis.xgroup_create(store.stream, "lat", id="$", mkstream=True)
            worker = SubscriberWorker(redis, store.keys, store, subscriber("lat", url))
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await anyio.sleep(0.3)
                for e in events(n):
                    sent[e.id] = time.time()
                    await redis.xadd(store.stream, dict(e.stream_fields()))
                    await anyio.sleep(0.02)
                while len(got := await stats(c, url)) < n:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        lat = sorted((got[i] - t) * 1000 for i, t in sent.items())
        return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
    finally:
        await delete_prefix(redis, prefix)


async def main(n: int) -> None:
    with redis_server() as redis_url, receiver() as url:
        redis = client(redis_url, 128)
        evs = events(n)
        for subs in (1, 10):
            base = await baseline(url, evs, IN_FLIGHT * subs, subs)
            mine = await ours(redis, url, evs, subs)
            print(f"throughput, {subs:>2} subscriber(s) x {n} events, {IN_FLIGHT} in flight "
                  f"each: notifier {mine:,.0f}/s, baseline {base:,.0f}/s -> ratio "
                  f"{mine / base:.2f} (aim >= 0.7)")
        pevs = patient_events(n)
        plain, shaped = [], []
        for _ in range(3):  # interleaved: a loaded machine slows both alike
            plain.append(await ours(redis, url, pevs, 1))
            shaped.append(await ours(redis, url, pevs, 1, **SHAPING))
        p, q = statistics.median(plain), statistics.median(shaped)
        print(f"throughput with filters and shaping, 1 subscriber x {n} patient updates, "
              f"median of 3: {q:,.0f}/s, without {p:,.0f}/s -> ratio {q / p:.2f} "
              "(aim >= 0.9)")
        p50, p99 = await latency(redis, url, 300)
        print(f"latency XADD -> receipt, 300 events 20 ms apart: p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms (aim: p50 < 20 ms)")
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    anyio.run(main, parser.parse_args().events)
