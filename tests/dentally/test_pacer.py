"""The pacer: one key's budget in front of every request made with it (real time, short)."""

from __future__ import annotations

import itertools
import time

import anyio
import httpx

from notifier.core.budget import Budget, Priority
from notifier.dentally.client import DentallyClient
from notifier.dentally.pacer import HEARTBEAT, Pacer


async def test_steady_polls_go_before_waiting_bulk_work() -> None:
    pacer = Pacer(Budget(share=100_000, window=3600, max_rate=20))   # a slot every 50 ms
    order: list[str] = []

    async def request(name: str, priority: Priority) -> None:
        await pacer.slot(priority)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(request, f"bulk{i}", Priority.BULK)
        await anyio.sleep(0.01)   # bulk0 went at once; the others wait
        tg.start_soon(request, "steady", Priority.STEADY)
        tg.start_soon(request, "key", Priority.KEY)
    assert order[0] == "bulk0" and order[1:3] == ["key", "steady"], order


async def test_steady_polls_never_starve_bulk_work() -> None:
    budget = Budget(share=100_000, window=3600, max_rate=50)   # a slot every 20 ms
    pacer = Pacer(budget)
    got_bulk = anyio.Event()
    waited: list[float] = []

    async def steady_flood() -> None:
        while not got_bulk.is_set():
            await pacer.slot(Priority.STEADY)

    async def bulk() -> None:
        began = time.monotonic()
        await pacer.slot(Priority.BULK)
        waited.append(time.monotonic() - began)
        got_bulk.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(steady_flood)
            await anyio.sleep(0.05)
            tg.start_soon(bulk)
    # patience of 5 slots (0.1 s), then its turn among the steady ones
    assert waited[0] < 0.5, waited


async def test_waiting_beats_the_heart_and_cancelling_leaves_no_trace() -> None:
    budget = Budget(share=100_000, window=3600, max_rate=50)
    pacer = Pacer(budget)
    budget.capped_until = time.time() + 0.3
    beats: list[float] = []

    async def waiter() -> None:
        HEARTBEAT.set(lambda: beats.append(time.monotonic()))
        await pacer.slot(Priority.STEADY)

    with anyio.move_on_after(0.1):
        await waiter()                # cancelled while waiting
    assert pacer._queue == []
    began = time.monotonic()
    await waiter()
    assert time.monotonic() - began >= 0.15 and beats   # until the cap, 0.2 s on


async def test_one_pacer_serves_every_client_of_a_key() -> None:
    """Two practices with one key: one budget, one pace, whoever asks."""
    budget = Budget(share=100_000, window=3600, max_rate=40)   # 25 ms apart
    pacer = Pacer(budget)
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        return httpx.Response(200, json={"user": {"id": 1}})

    clients = [DentallyClient("https://api.example.test", "k", pacer=pacer,
                              transport=httpx.MockTransport(handler)) for _ in range(2)]
    async with anyio.create_task_group() as tg:
        for c in clients:
            for _ in range(8):
                tg.start_soon(c.user)
    gaps = [b - a for a, b in itertools.pairwise(sorted(sent))]
    assert len(sent) == 16 and min(gaps) >= 0.02, gaps
    assert budget.used(time.time()) == 16
    for c in clients:
        await c.aclose()
