"""The client's error handling, with httpx.MockTransport (no server needed)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from notifier.core import resources
from notifier.core.budget import Budget
from notifier.dentally.client import USER_AGENT, DentallyClient
from notifier.dentally.pacer import Pacer
from notifier.errors import (
    AuthError,
    BadRequest,
    MalformedResponse,
    NotFound,
    PageTooDeep,
    RateLimited,
    ScopeError,
    TransientError,
)

KEY = "sk_live_very_secret_key"
DATE = "Fri, 27 Nov 2026 15:00:00 GMT"


def client(handler, **kw) -> DentallyClient:  # type: ignore[no-untyped-def]
    return DentallyClient("https://api.example.test", KEY,
                          transport=httpx.MockTransport(handler), **kw)


def reply(status: int, body: object = None, **headers: str) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"date": DATE, **headers})


async def test_sends_version_user_agent_and_bearer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return reply(200, {"patients": [{"id": 1}], "meta": {"total_count": 1}})

    c = client(handler)
    page = await c.page(resources.get("patients"), page=2, per_page=100,
                        updated_after=1_795_791_600_000, updated_before=1_795_791_601_000)
    r = seen[0]
    assert r.url.path == "/v1/patients"
    assert dict(r.url.params) == {"page": "2", "per_page": "100",
                                  "updated_after": "2026-11-27T15:00:00.000Z",
                                  "updated_before": "2026-11-27T15:00:01.000Z"}
    assert r.headers["user-agent"] == USER_AGENT
    assert r.headers["authorization"] == f"Bearer {KEY}"
    assert page.rows == [{"id": 1}] and page.total_count == 1
    assert c.server_now() is not None


async def test_appointments_never_send_updated_before_and_ask_for_cancelled() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return reply(200, {"appointments": [], "meta": {}})

    page = await client(handler).page(resources.get("appointments"), page=1, per_page=100,
                                      updated_after=0, updated_before=5)
    params = dict(seen[0].url.params)
    assert params["cancelled"] == "true" and "updated_before" not in params
    assert page.total_count is None


@pytest.mark.parametrize(("status", "headers", "error"), [
    (401, {}, AuthError),
    (403, {"x-ratelimit-remaining": "12"}, ScopeError),
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1795795200"}, RateLimited),
    (429, {"retry-after": "30"}, RateLimited),
    (404, {}, NotFound),
    (413, {}, PageTooDeep),
    (400, {}, BadRequest),
    (422, {}, BadRequest),
    (500, {}, TransientError),
    (503, {}, TransientError),
])
async def test_status_maps_to_the_exception_tree(status: int, headers: dict[str, str],
                                                 error: type[Exception]) -> None:
    c = client(lambda r: reply(status, {"error": {"message": "nope"}}, **headers),
               wall=lambda: 1_795_791_600.0)
    with pytest.raises(error) as info:
        await c.get("/patients")
    assert str(status) in str(info.value) and KEY not in str(info.value)
    if error is RateLimited:
        assert isinstance(info.value, RateLimited)
        expected = 1_795_795_200.0 if status == 403 else 1_795_791_630.0
        assert info.value.reset_at == expected


async def test_timeouts_and_connection_errors_are_transient() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler in (slow, refused):
        with pytest.raises(TransientError) as info:
            await client(handler).get("/user")
        assert KEY not in str(info.value)


@pytest.mark.parametrize(("body", "message"), [
    ("not json", "not JSON"),
    ([], "not a JSON object"),
    ({"meta": {}}, "no 'patients' list"),
    ({"patients": [1]}, r"patients\[0\] is not an object"),
    ({"patients": [{"id": 1}, {"name": "x"}]}, r"patients\[1\] has no usable 'id'"),
    ({"patients": [{"id": True}]}, "no usable 'id'"),
])
async def test_malformed_pages_name_what_is_wrong(body: object, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return httpx.Response(200, content=raw)

    with pytest.raises(MalformedResponse, match=message):
        await client(handler).page(resources.get("patients"), page=1, per_page=100)


async def test_rate_headers_are_tracked_and_the_reset_put_on_our_clock() -> None:
    # Our clock is 100 s behind the server's Date: the reset, an hour after the server's
    # now, is an hour after ours.
    c = client(lambda r: reply(200, {"user": {"id": 1}}, **{
        "x-ratelimit-limit": "3600", "x-ratelimit-remaining": "3000",
        "x-ratelimit-reset": "1795795200"}), wall=lambda: 1_795_791_500.0)
    await c.user()
    assert (c.rate.limit, c.rate.remaining) == (3600, 3000)
    assert c.rate.reset_at == pytest.approx(1_795_795_100.0, abs=0.05)


HOURLY = {"error": {"type": "invalid_access_error", "message": "Rate limit exceeded"}}


@pytest.mark.parametrize("headers", [{}, {"x-ratelimit-remaining": "7"}])
async def test_the_hourly_caps_403_body_is_rate_limiting(headers: dict[str, str]) -> None:
    """Never a scope denial (nor a revocation), whatever the other headers say."""
    c = client(lambda r: reply(403, HOURLY, **headers))
    with pytest.raises(RateLimited):
        await c.get("/patients")


async def test_with_a_pacer_rate_refusals_are_sent_again_not_raised() -> None:
    answers = [reply(429, {"error": "slow down"}, **{"retry-after": "0",
                                                      "x-ratelimit-remaining": "50"}),
               reply(403, HOURLY, **{"x-ratelimit-remaining": "0"}),
               reply(200, {"patients": [{"id": 1}], "meta": {"total_count": 1}})]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params["page"])
        return answers.pop(0)

    budget = Budget(share=1000, window=3600, max_rate=100)
    c = client(handler, pacer=Pacer(budget))
    page = await c.page(resources.get("patients"), page=3, per_page=100)
    assert page.rows == [{"id": 1}] and seen == ["3", "3", "3"]
    assert budget.refusals == {"burst": 1, "hourly": 1} and budget.rate == 50
    assert budget.used(time.time()) == 3   # every attempt counts against the share


async def test_the_hourly_cap_403_body_is_a_rate_limit_whatever_the_headers_say() -> None:
    """Reported: the hourly cap answers 403 with this body and no Retry-After. Even with a
    stale ``x-ratelimit-remaining`` above zero it must never read as a missing scope (or,
    through the lifecycle, as a revocation)."""
    from notifier.core.keylife import Outcome

    told: list[Outcome] = []
    c = client(lambda r: reply(403, {"error": {"type": "invalid_access_error",
                                               "message": "Rate limit exceeded"}},
                               **{"x-ratelimit-remaining": "12",
                                  "x-ratelimit-reset": "1795795200"}),
               wall=lambda: 1_795_791_600.0)
    c.observer = lambda outcome, *_: told.append(outcome)
    with pytest.raises(RateLimited) as info:
        await c.page(resources.get("patients"), page=1, per_page=100)
    assert info.value.reset_at == pytest.approx(1_795_795_200.0, abs=0.05)
    assert told == [Outcome.RATE_LIMITED]


async def test_the_gate_refuses_all_but_probes_without_a_request() -> None:
    sent: list[httpx.Request] = []
    c = client(lambda r: sent.append(r) or reply(200, {"user": {"id": 1}}))
    c.gate = lambda probe: 0.0 if probe else None
    with pytest.raises(AuthError, match="not sent"):
        await c.get("/patients")
    assert sent == []
    await c.user(probe=True)
    assert len(sent) == 1
