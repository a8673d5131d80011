"""The poller against the sandbox and a real Redis, in-process."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from notifier.core import resources
from notifier.core.budget import Budget
from notifier.core.cursor import Policy
from notifier.dentally.client import DentallyClient
from notifier.dentally.pacer import Pacer
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.service.poller import ResourcePoller
from notifier.store.redis import Store
from tests.helpers import stream_events


def make_poller(store: Store, sandbox: SandboxThread, resource: str = "patients",
                initial_sync: str = "emit", **policy: int) -> ResourcePoller:
    client = DentallyClient(sandbox.url, sandbox.key or "")
    return ResourcePoller(store, client, "main", resources.get(resource),
                          Policy(**policy), initial_sync=initial_sync)


async def test_backfill_then_updates_publish_one_event_each(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    await control.seed("patients", 250, spread_days=30)
    poller = make_poller(store, sandbox)
    assert await poller.poll_once() == 250
    events = await stream_events(store.redis, store.stream)
    assert Counter(e["type"] for e in events) == {"patient.created": 250}
    assert len({e["data"]["record_id"] for e in events}) == 250

    changed = await control.mutate("patients", count=7)
    assert await poller.poll_once() == 7
    assert await poller.poll_once() == 0
    events = await stream_events(store.redis, store.stream)
    updates = [e for e in events if e["type"] == "patient.updated"]
    assert sorted(e["data"]["record_id"] for e in updates) == sorted(changed)
    for e in updates:
        assert e["data"]["changes"]
        for field, (old, new) in e["data"]["changes"].items():
            assert e["data"]["record"][field] == new and old != new
    await poller.client.aclose()


async def test_seed_mode_is_silent_then_publishes_new_records(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    await control.seed("patients", 120, spread_days=5)
    poller = make_poller(store, sandbox, initial_sync="seed")
    assert await poller.poll_once() == 0
    created = await control.create("patients", first_name="Nia")
    assert await poller.poll_once() == 1
    (event,) = await stream_events(store.redis, store.stream)
    assert event["type"] == "patient.created"
    assert event["data"]["record_id"] == str(created["id"])
    assert event["data"]["record"]["first_name"] == "Nia"
    await poller.client.aclose()


@pytest.mark.parametrize("name", sorted(resources.RESOURCES))
async def test_every_resource_is_polled_with_its_strategy(
        name: str, store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    ids = await control.seed(name, 30, spread_days=0)
    poller = make_poller(store, sandbox, resource=name, initial_sync="emit")
    assert await poller.poll_once() == 30
    changed = await control.mutate(name, ids=ids[:3])
    assert await poller.poll_once() == 3
    assert await poller.poll_once() == 0
    events = await stream_events(store.redis, store.stream)
    singular = resources.get(name).singular
    assert Counter(e["type"] for e in events) == {f"{singular}.created": 30,
                                                  f"{singular}.updated": 3}
    assert {e["data"]["record_id"] for e in events[30:]} == set(changed)
    await poller.client.aclose()


async def test_first_sync_records_its_progress_for_status(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    from notifier.service.status import _backfill

    await control.seed("patients", 450, spread_days=30)
    poller = make_poller(store, sandbox, initial_sync="seed", window_rows=100)
    await poller.poll_once()
    raw = await store.redis.hgetall(store.keys.cursor("main", "patients"))
    f = {k.decode(): v.decode() for k, v in raw.items()}
    assert f["backfill_total"] == "450" and int(f["backfill_done"]) >= 450
    began = float(f["backfill_started_at"])
    # Halfway after 100 s: another 100 s at that rate, unless the budget is slower.
    half = {"backfill_done": "225", "backfill_total": "450",
            "backfill_started_at": str(began)}
    assert _backfill(half, began + 100, 1800, 100)["eta_seconds"] == 100
    assert _backfill(half, began + 100, 36, 100)["eta_seconds"] == 225
    await poller.client.aclose()


class Recording(httpx.AsyncBaseTransport):
    """The real transport to the sandbox, noting each (page, status)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[int, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.startswith("/v1/patients"):
            self.seen.append((int(request.url.params.get("page", "1")), response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_429_resumes_the_window_at_the_page_it_reached(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Issue 9: a 429 restarted the window from page 1 at full speed, again and again, and
    later pages were never read. Paced too fast for a burst limit of 3/s, every page is
    read once, in order, the refused ones sent again in place."""
    await control.seed("patients", 300, spread_days=30)
    await control.quirks(burst_limit=3)
    transport = Recording()
    client = DentallyClient(sandbox.url, sandbox.key or "", transport=transport,
                            pacer=Pacer(Budget(share=10_000, window=3600, max_rate=50)))
    poller = ResourcePoller(store, client, "main", resources.get("patients"),
                            Policy(per_page=50), initial_sync="emit")
    assert await poller.poll_once() == 300
    refused = [p for p, s in transport.seen if s == 429]
    read = [p for p, s in transport.seen if s == 200]
    assert refused, transport.seen          # the burst limit was hit
    assert read == list(range(1, 8)), transport.seen   # 6 full pages and the empty 7th
    assert client.pacer is not None and client.pacer.budget.rate < 50   # and slowed down
    await client.aclose()
