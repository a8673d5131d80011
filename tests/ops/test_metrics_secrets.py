"""/metrics parsed by prometheus-client's own parser, /healthz, and a secrets audit of the
whole pipeline: logs, status, metrics and every Redis value."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from notifier.ops.http import free_port
from notifier.sandbox.control import SandboxControl
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until
from tests.receiver import Receiver, Reply

SECRET = "whsec_c2VjcmV0LXdlYmhvb2stdmFsdWUtMTIzNDU2Nzg5MA=="
API_KEY = "sk_live_TOPSECRET_key_value_42"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_and_health_reflect_what_happened_and_no_secret_leaks(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.add_key(API_KEY)
    await control.seed("patients", 6)
    port = free_port()
    failing = True
    with Receiver(lambda r, n: Reply(500 if failing and n == 0 else 200)) as rx:
        d = daemon_factory(key=API_KEY, resources=["patients", "invoices"],
                           initial_sync="emit", metrics_listen=f"127.0.0.1:{port}",
                           subscribers=[{"name": "crm", "url": rx.url, "secret": SECRET,
                                         "allow_private": True, "start": "beginning",
                                         "retry_schedule": [0.05]}])
        d.start()

        async def delivered() -> bool:
            return len(set(rx.ids())) >= 6
        await wait_until(delivered, 30, "deliveries")
        await control.key(API_KEY, "scopes", scopes=["patients:read"])  # invoices denied
        await control.key(API_KEY, "revoke")                            # and then revoked

        async def revoked() -> bool:
            return any(f[b"type"] == b"notifier.key.revoked"
                       for _, f in await redis.xrange(ns.stream))
        await wait_until(revoked, 30, "revocation")
        await anyio.sleep(2.5)  # gauges refresh every 2 s
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            text = (await c.get("/metrics")).text
            health = await c.get("/healthz")
        status = (await anyio.run_process([sys.executable, "-m", "notifier", "status",
                                           "--config", str(d.config)])).stdout.decode()
        d.stop()
    m = samples(text)
    assert m[("dentally_notifier_events_published_total",
              (("practice", "main"), ("type", "patient.created")))] == 6
    assert m[("dentally_notifier_deliveries_total",
              (("outcome", "delivered"), ("subscriber", "crm")))] >= 6
    assert m[("dentally_notifier_deliveries_total",
              (("outcome", "retry"), ("subscriber", "crm")))] >= 1
    assert m[("dentally_notifier_polls_total",
              (("outcome", "ok"), ("practice", "main"), ("resource", "patients")))] >= 1
    assert m[("dentally_notifier_key_ok", (("practice", "main"),))] == 0
    assert m[("dentally_notifier_stream_length", ())] >= 7
    assert m[("dentally_notifier_consumer_lag", (("subscriber", "crm"),))] >= 0
    assert health.status_code == 200 and health.json() == {"ok": True}

    # Neither secret anywhere: logs, status, metrics, any Redis value.
    everything: list[Any] = [d.log.read_text(), status, text]
    async for key in redis.scan_iter(match=f"{ns.prefix}*", count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            everything.append(await redis.get(key))
        elif kind == "hash":
            everything.append(await redis.hgetall(key))
        elif kind == "list":
            everything.append(await redis.lrange(key, 0, -1))
        elif kind == "zset":
            everything.append(await redis.zrange(key, 0, -1))
        elif kind == "stream":
            everything.append(await redis.xrange(key))
    blob = repr(everything)
    assert "revoked" in blob  # the audit did see the incident
    for secret in (API_KEY, SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in blob
