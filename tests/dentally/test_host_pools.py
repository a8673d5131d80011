"""The process's HTTP pools: one per Dentally host, whatever the number of practices."""

from __future__ import annotations

import anyio
import httpx

from notifier.core import resources
from notifier.dentally.client import DentallyClient, HostPools

DATE = "Fri, 27 Nov 2026 15:00:00 GMT"


def page_reply(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"patients": [], "meta": {"total_count": 0}},
                          headers={"date": DATE})


async def test_practices_on_one_host_share_one_pool_and_keep_their_own_keys() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return page_reply(request)

    made: list[httpx.MockTransport] = []

    def transport() -> httpx.MockTransport:
        made.append(httpx.MockTransport(handler))
        return made[-1]

    pools = HostPools(transport=transport)
    a = DentallyClient("https://api.example.test/a", "key-a", pools=pools)
    b = DentallyClient("https://api.example.test/b", "key-b", pools=pools)
    other = DentallyClient("https://api.other.test", "key-c", pools=pools)
    for c in (a, b, other):
        await c.page(resources.get("patients"), page=1, per_page=100)
    assert pools.hosts == 2 and len(made) == 2
    assert [(r.url.host, r.url.path, r.headers["authorization"]) for r in seen] == [
        ("api.example.test", "/a/v1/patients", "Bearer key-a"),
        ("api.example.test", "/b/v1/patients", "Bearer key-b"),
        ("api.other.test", "/v1/patients", "Bearer key-c")]
    # A practice that stops does not close the pool the others use.
    await a.aclose()
    a.set_key("key-a2")
    await b.page(resources.get("patients"), page=1, per_page=100)
    assert seen[-1].headers["authorization"] == "Bearer key-b"
    await pools.aclose()
    assert pools.hosts == 0


async def test_requests_in_flight_to_a_host_are_bounded_and_cancelling_one_frees_its_slot(
        ) -> None:
    """Requests beyond the bound wait in our limiter (never in httpcore's queue, whose
    cancellation leaks slots); a cancelled one gives its slot back."""
    in_flight = peak = 0
    release = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await release.wait()
        finally:
            in_flight -= 1
        return page_reply(request)

    pools = HostPools(max_connections=3, transport=lambda: httpx.MockTransport(handler))
    clients = [DentallyClient("https://api.example.test", f"k{i}", pools=pools)
               for i in range(8)]
    done = 0

    async def poll(c: DentallyClient) -> None:
        nonlocal done
        await c.page(resources.get("patients"), page=1, per_page=100)
        done += 1

    doomed = anyio.CancelScope()

    async def cancelled_poll() -> None:
        with doomed:
            await poll(clients[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancelled_poll)
        await anyio.sleep(0.05)
        for c in clients[1:]:
            tg.start_soon(poll, c)
        await anyio.sleep(0.1)
        assert in_flight == 3
        doomed.cancel()   # the first request, in flight, is cancelled
        await anyio.sleep(0.1)
        assert in_flight == 3   # its slot went to a waiting request
        release.set()
    assert peak == 3 and done == 7
    await pools.aclose()


async def test_a_cookie_one_practice_is_given_never_goes_out_with_another_practices_key(
        ) -> None:
    """Practices share a host's client; a Set-Cookie (a load balancer's stickiness, a
    session) must not cross from one practice's key to another's, nor be kept at all."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        reply = page_reply(request)
        reply.headers["set-cookie"] = "session=practice-a-secret; Path=/"
        return reply

    pools = HostPools(transport=lambda: httpx.MockTransport(handler))
    a = DentallyClient("https://api.example.test", "key-a", pools=pools)
    b = DentallyClient("https://api.example.test", "key-b", pools=pools)
    await a.page(resources.get("patients"), page=1, per_page=100)
    await b.page(resources.get("patients"), page=1, per_page=100)
    await a.page(resources.get("patients"), page=1, per_page=100)
    assert [r.headers.get("cookie") for r in seen] == [None, None, None]
    await pools.aclose()
