"""URL safety (no network: IP literals and localhost) and the sender's HTTP handling."""

from __future__ import annotations

import httpx
import pytest

from notifier.delivery.safety import URLGuard, unsafe_reason
from notifier.delivery.sender import BODY_LIMIT, Sender
from notifier.errors import UnsafeURL

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "private"), ("fd00::1", "private"), ("0.0.0.0", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("224.0.0.1", "multicast"),
])
def test_internal_addresses_are_refused(address: str, reason: str) -> None:
    found = unsafe_reason(address)
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert unsafe_reason(address) is None


async def test_guard_resolves_names_and_honours_allow_private() -> None:
    with pytest.raises(UnsafeURL, match=r"localhost resolves to .* loopback.*allow_private"):
        await URLGuard("http://localhost:9/hook", allow_private=False).check()
    with pytest.raises(UnsafeURL, match=r"169\.254\.169\.254"):
        await URLGuard("http://169.254.169.254/latest", allow_private=False).check()
    await URLGuard("http://localhost:9/hook", allow_private=True).check()
    await URLGuard("https://93.184.216.34/hook", allow_private=False).check()
    with pytest.raises(UnsafeURL, match="not an http"):
        URLGuard("ftp://example.com/x", allow_private=False)


def sender(handler, allow_private: bool = True) -> Sender:  # type: ignore[no-untyped-def]
    return Sender("http://127.0.0.1:9/hook", [SECRET], timeout=1, max_in_flight=2,
                  allow_private=allow_private, transport=httpx.MockTransport(handler))


async def test_unsafe_url_is_not_contacted() -> None:
    calls = []
    s = sender(lambda r: calls.append(r) or httpx.Response(200), allow_private=False)
    attempt = await s.send("evt_1", b"{}")
    assert attempt.unsafe and attempt.status is None and "loopback" in attempt.error
    assert calls == []


async def test_redirects_are_not_followed_and_bodies_are_capped() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/hook":
            return httpx.Response(302, headers={"location": "http://127.0.0.1:9/elsewhere"})
        return httpx.Response(200)

    attempt = await sender(handler).send("evt_1", b'{"a":1}')
    assert attempt.status == 302 and attempt.error == "HTTP 302" and len(seen) == 1
    assert seen[0].headers["webhook-id"] == "evt_1"
    huge = await sender(lambda r: httpx.Response(200, content=b"x" * (BODY_LIMIT * 1000))
                        ).send("evt_2", b"{}")
    assert huge.status == 200


async def test_timeouts_and_refusals_are_attempts_without_status() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    attempt = await sender(slow).send("evt_1", b"{}")
    assert attempt.status is None and attempt.error == "timed out"
    a503 = await sender(lambda r: httpx.Response(503, headers={"retry-after": "7"})
                        ).send("evt_1", b"{}")
    assert a503.retry_after == 7


def test_malformed_secret_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not base64"):
        Sender("http://127.0.0.1:9/", ["whsec_***"], timeout=1, max_in_flight=1,
               allow_private=True)
