"""Dentally's own webhooks as hints, end to end: the sandbox sends them (with faults), the
daemon (a real process) takes them on ``[ingest] listen``, polling stays the truth."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from notifier.core import hints
from notifier.ops.http import free_port
from notifier.sandbox.control import SandboxControl
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until

SECRET = "s3cret-dentally"


async def synced(redis: Redis, ns: Namespace, resource: str = "patients") -> bool:
    return await redis.hget(f"{ns.prefix}:{{main}}:cursor:{resource}", "synced") == b"1"


async def record_events(redis: Redis, ns: Namespace) -> list[dict[str, Any]]:
    return [e for e in await stream_events(redis, ns.stream)
            if not e["type"].startswith("notifier.")]


async def started(daemon_factory: Callable[..., Daemon], redis: Redis, ns: Namespace,
                  control: SandboxControl, *, hook: bool = True,
                  **practice: Any) -> str:
    """A daemon taking hints for patients, synced; the sandbox's webhook aimed at it.
    Returns the endpoint's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/dentally/main"
    keys: dict[str, Any] = {"resources": ["patients"], "poll_interval": 60.0,
                            "backstop_interval": 60.0, "webhook_secret": SECRET, **practice}
    daemon = daemon_factory(ingest={"listen": f"127.0.0.1:{port}"}, **keys)
    daemon.start()
    await wait_until(lambda: synced(redis, ns), 20, "the first sync")

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as http:
                await http.post(url, content=b"{}")
            return True
        except httpx.HTTPError:
            return False
    await wait_until(up, 20, "the ingest endpoint")
    if hook:
        await control.dentally_webhooks(url=url, secret=SECRET)
    return url


async def patient_requests(control: SandboxControl, since: int) -> int:
    """Requests for patients (what a hint costs) since the ledger's request ``since``;
    the daemon's hourly GET /v1/webhooks is not a hint's cost."""
    ledger = await control.ledger(requests_since=since)
    return sum(r["path"].startswith("/v1/patients") for r in ledger["requests"])


async def requests_made(control: SandboxControl) -> int:
    return int((await control.stats())["total"])


async def test_a_hint_brings_the_change_within_a_second(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 20)
    await started(daemon_factory, redis, ns, control)
    for rid in ids[:3]:
        t0 = time.monotonic()
        await control.mutate("patients", ids=[rid])

        async def arrived(rid: str = rid) -> bool:
            return any(e["data"]["record_id"] == rid for e in await record_events(redis, ns))
        await wait_until(arrived, 5, f"patient {rid}'s event")
        assert time.monotonic() - t0 < 3.0     # the poll interval is 60 s
    await anyio.sleep(1.5)
    events = await record_events(redis, ns)
    assert [e["data"]["record_id"] for e in events] == ids[:3]


async def test_forged_replayed_or_oversized_webhooks_cost_no_request(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 5)
    url = await started(daemon_factory, redis, ns, control, hook=False)
    body = json.dumps({"event": "patient.updated", "object": "patient",
                       "data": {"id": 1}}).encode()
    good = {hints.Scheme().header: hints.sign(SECRET, body)}
    big = b'{"event": "patient.updated", "pad": "' + b"x" * (1 << 20) + b'"}'
    async with httpx.AsyncClient() as http:
        async def post(content: bytes, headers: dict[str, str]) -> int:
            before = (await control.ledger())["requests_seq"]
            status = (await http.post(url, content=content, headers=headers)).status_code
            await anyio.sleep(1.2)      # a triggered poll would have come by now
            spent = await patient_requests(control, before)
            return status if spent == 0 else -spent
        assert await post(body, {}) == 401                                   # unsigned
        assert await post(body, {hints.Scheme().header: "ab" * 32}) == 401   # forged
        assert await post(body + b" ", good) == 401                          # tampered
        assert await post(big, {hints.Scheme().header: hints.sign(SECRET, big)}) == 413
        # a genuine one costs its poll, and then its replays cost nothing
        before = (await control.ledger())["requests_seq"]
        status = (await http.post(url, content=body, headers=good)).status_code
        assert status == 202
        await anyio.sleep(1.2)
        assert await patient_requests(control, before) >= 1   # the measure sees a poll
        for _ in range(3):
            assert await post(body, good) == 202


async def test_a_dropped_webhook_is_caught_by_the_backstop_poll(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 10)
    await started(daemon_factory, redis, ns, control, poll_interval=1.0,
                  backstop_interval=4.0)
    await control.mutate("patients", ids=[ids[0]])

    async def count(n: int) -> bool:
        return len(await record_events(redis, ns)) >= n
    await wait_until(lambda: count(1), 5, "the hinted change")
    await control.dentally_webhooks(faults={"drop_rate": 1.0})
    await control.mutate("patients", ids=[ids[1]])
    await wait_until(lambda: count(2), 8, "the backstop poll")
    log = (await control.dentally_webhooks())["log"]
    assert log[-1]["fault"] == "dropped" and log[-1]["id"] == ids[1]
    await anyio.sleep(1)
    assert [e["data"]["record_id"] for e in await record_events(redis, ns)] == ids[:2]


async def test_duplicated_and_reordered_webhooks_publish_nothing_twice(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 10)
    await started(daemon_factory, redis, ns, control)
    await control.dentally_webhooks(faults={"duplicate_rate": 1.0, "reorder": True,
                                            "reorder_window": 0.1})
    for _ in range(3):
        await control.mutate("patients", ids=ids[:4])
        await anyio.sleep(0.3)
    current = {str(r["id"]): r for r in await control.records("patients")}

    async def caught_up() -> bool:
        last = {e["data"]["record_id"]: e["data"]["record"]
                for e in await record_events(redis, ns)}
        return all(last.get(i) == current[i] for i in ids[:4])
    await wait_until(caught_up, 8, "the last version of every record")
    await anyio.sleep(1.5)
    events = await record_events(redis, ns)
    assert len({e["id"] for e in events}) == len(events)
    changes = Counter((e["data"]["record_id"], e["data"]["updated_at"]) for e in events)
    assert max(changes.values()) == 1
    log = (await control.dentally_webhooks())["log"]
    assert len(log) == 2 * 12      # every webhook was sent twice


async def test_a_deletion_hint_publishes_deleted_at_once(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    ids = await control.seed("patients", 10)
    await started(daemon_factory, redis, ns, control)
    await control.delete("patients", ids[3])

    async def deleted() -> bool:
        return any(e["type"] == "patient.deleted" for e in await record_events(redis, ns))
    await wait_until(deleted, 5, "patient.deleted")     # the sweep is a day away
    await anyio.sleep(1)
    events = await record_events(redis, ns)
    assert [(e["type"], e["data"]["record_id"]) for e in events] \
        == [("patient.deleted", ids[3])]


@pytest.mark.parametrize("silence", [2.0])
async def test_a_silent_webhook_is_detected_once(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon], silence: float) -> None:
    ids = await control.seed("patients", 10)
    await started(daemon_factory, redis, ns, control, poll_interval=0.5,
                  backstop_interval=1.0, hint_silence_after=silence)
    await control.mutate("patients", ids=[ids[0]])

    async def silent() -> list[dict[str, Any]]:
        return [e for e in await stream_events(redis, ns.stream)
                if e["type"] == hints.SILENT]
    await anyio.sleep(silence + 0.5)
    assert await silent() == []             # a quiet practice is not a broken webhook
    await control.dentally_webhooks(active=False)   # Dentally switched it off
    for rid in ids[1:4]:
        await control.mutate("patients", ids=[rid])
        await anyio.sleep(0.7)

    async def one() -> bool:
        return len(await silent()) >= 1
    await wait_until(one, 5, "notifier.dentally_webhook.silent")
    await anyio.sleep(1.5)
    found = await silent()
    assert len(found) == 1 and found[0]["data"]["resource"] == "patients"
    assert len(await record_events(redis, ns)) == 4


async def test_check_status_and_an_inactive_webhook(
        redis: Redis, ns: Namespace, control: SandboxControl, tmp_path: Any,
        daemon_factory: Callable[..., Daemon]) -> None:
    import io

    from notifier import config
    from notifier.service import check, status

    await control.seed("patients", 5)
    url = await started(daemon_factory, redis, ns, control)
    settings = config.load(sorted(tmp_path.glob("config*.toml"))[-1])
    out = io.StringIO()
    assert await check.run(settings, out)
    assert "Dentally webhooks  ok    #1 active, 0 failed" in out.getvalue().replace(
        "main: ", "")
    await control.dentally_webhooks(active=False)      # Dentally switched it off
    out = io.StringIO()
    assert not await check.run(settings, out)
    assert "#1 INACTIVE" in out.getvalue()

    async def inactive() -> bool:
        return any(e["type"] == hints.INACTIVE for e in await stream_events(redis, ns.stream))
    await wait_until(inactive, 15, "notifier.dentally_webhook.inactive")
    out = io.StringIO()
    await status.run(settings, out, as_json=False)
    assert "Dentally webhooks (listed" in out.getvalue()
    assert "#1 INACTIVE (switched off by Dentally), 0 failed / 0 delivered" in out.getvalue()
    assert url not in out.getvalue()


@pytest.mark.slow
async def test_a_flood_of_genuine_hints_stays_within_the_share(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """Every hint is signed and new, 50 a second for 4 s: the polls they trigger are
    coalesced (1/s per resource) and paced by the budget (the share: 6 requests per 3 s
    window here), never one request per hint."""
    await control.seed("patients", 5)
    await control.seed("payments", 5)
    url = await started(daemon_factory, redis, ns, control, hook=False,
                        resources=["patients", "payments"], rate_window=3,
                        max_requests_per_hour=6)
    await anyio.sleep(3.5)     # the first sync's requests leave the window
    before = await requests_made(control)
    t0 = time.monotonic()
    async with httpx.AsyncClient() as http:
        for i in range(200):
            resource = ("patient", "payment")[i % 2]
            raw = json.dumps({"event": f"{resource}.updated", "data": {"id": 10_000 + i}})
            await http.post(url, content=raw.encode(),
                            headers={hints.Scheme().header: hints.sign(SECRET, raw.encode())})
            await anyio.sleep(0.02)
    spent = await requests_made(control) - before
    elapsed = time.monotonic() - t0
    windows = elapsed / 3 + 1
    assert spent <= 6 * windows + 2, (spent, elapsed)
