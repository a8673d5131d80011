"""The Dentally webhook endpoint, in process: what it answers, counts and hands on."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from notifier.config import IngestConfig, PracticeConfig
from notifier.core import hints
from notifier.core.hints import Hint
from notifier.ops.metrics import Metrics
from notifier.service.ingest import Ingest

SECRET = "dentally-secret"
URL = "http://ingest/dentally/main"


def practice(**keys: Any) -> PracticeConfig:
    return PracticeConfig(**{"name": "main", "api_key": "k", "resources": ["patients",
                                                                            "payments"],
                             "webhook_secret": SECRET, **keys})


class World:
    def __init__(self, cfg: IngestConfig | None = None,
                 practices: list[PracticeConfig] | None = None) -> None:
        self.got: list[Hint] = []
        self.metrics = Metrics()
        self.now = 1000.0
        self.ingest = Ingest(cfg or IngestConfig(), self.route, self.metrics,
                             wall=lambda: self.now)
        self.ingest.configure(cfg or IngestConfig(), practices or [practice()])

    def route(self, name: str) -> Any:
        return self.got.append if name == "main" else None

    def count(self, outcome: str, name: str = "main") -> float:
        value = self.metrics.registry.get_sample_value(
            "dentally_notifier_webhook_hints_total", {"practice": name, "outcome": outcome})
        return value or 0.0


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=world.ingest.app())) as c:
        yield c


def signed(doc: object, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(doc).encode()
    return raw, {"X-Dentally-Signature": hints.sign(secret, raw)}


async def test_a_signed_webhook_is_handed_on_fast(world: World,
                                                  http: httpx.AsyncClient) -> None:
    raw, headers = signed({"event": "patient.updated", "object": "patient",
                           "data": {"id": 5}})
    t0 = time.perf_counter()
    r = await http.post(URL, content=raw, headers=headers)
    assert time.perf_counter() - t0 < 0.05
    assert r.status_code == 202 and r.json()["resource"] == "patients"
    assert world.got == [Hint("patients", "5", "updated")]
    assert world.count("accepted") == 1


@pytest.mark.parametrize(("headers", "outcome"), [
    ({}, "unsigned"),
    ({"X-Dentally-Signature": "00" * 32}, "bad_signature"),
    ({"X-Dentally-Signature": hints.sign("wrong", b'{"event": "patient.updated"}')},
     "bad_signature"),
])
async def test_unsigned_or_badly_signed_is_401_and_counted(
        world: World, http: httpx.AsyncClient, headers: dict[str, str], outcome: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "notifier.ingest"):
        for _ in range(3):
            r = await http.post(URL, content=b'{"event": "patient.updated"}',
                                headers=headers)
            assert r.status_code == 401
    assert world.got == [] and world.count(outcome) == 3
    assert len(caplog.records) == 1          # at most once a minute
    assert SECRET not in caplog.text


async def test_oversized_is_413_before_anything_is_read(world: World,
                                                        http: httpx.AsyncClient) -> None:
    big = b"{" + b" " * (1 << 20) + b"}"
    r = await http.post(URL, content=big, headers={
        "X-Dentally-Signature": hints.sign(SECRET, big)})
    assert r.status_code == 413 and world.got == [] and world.count("too_large") == 1

    async def chunks() -> AsyncIterator[bytes]:   # no Content-Length: counted as read
        for _ in range(20):
            yield b" " * 65536
    r = await http.post(URL, content=chunks(), headers={"X-Dentally-Signature": "00"})
    assert r.status_code == 413 and world.count("too_large") == 2


async def test_replays_are_ignored(world: World, http: httpx.AsyncClient) -> None:
    raw, headers = signed({"event": "patient.updated", "data": {"id": 1}})
    for _ in range(3):
        assert (await http.post(URL, content=raw, headers=headers)).status_code == 202
    assert len(world.got) == 1 and world.count("replayed") == 2
    world.now += 601
    await http.post(URL, content=raw, headers=headers)
    assert len(world.got) == 2


async def test_unparsable_or_unpolled_is_2xx_but_no_hint(world: World,
                                                         http: httpx.AsyncClient) -> None:
    # 2xx all the same: Dentally switches a webhook off after 50 failures
    for doc in ({"event": "appointment.updated", "data": {"id": 1}}, {"hello": 1}, [1]):
        raw, headers = signed(doc)
        assert (await http.post(URL, content=raw, headers=headers)).status_code == 202
    assert world.got == [] and world.count("ignored") == 3


async def test_unknown_practice_or_one_without_a_secret_is_404(tmp_path: Path) -> None:
    w = World(practices=[practice(), practice(name="other", webhook_secret=None),
                         practice(name="broken", webhook_secret=None,
                                  webhook_secret_file=tmp_path / "missing")])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=w.ingest.app())) as c:
        for name in ("nobody", "other", "broken"):
            raw, headers = signed({"event": "patient.updated"})
            r = await c.post(f"http://ingest/dentally/{name}", content=raw, headers=headers)
            assert r.status_code == 404
        assert (await c.get(URL)).status_code == 405
    assert w.count("unknown_practice", "") == 3


async def test_header_encoding_and_rotation_are_configurable() -> None:
    cfg = IngestConfig(signature_header="X-Sig", signature_encoding="base64",
                       signature_prefix="sha256=")
    w = World(cfg, [practice(webhook_secret="new old")])
    scheme = hints.Scheme("X-Sig", "base64", "sha256=")
    raw = b'{"event": "payment.created", "data": {"id": 9}}'
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=w.ingest.app())) as c:
        for secret in ("old", "new"):
            body = raw[:-1] + f', "k": "{secret}"}}'.encode()
            r = await c.post(URL, content=body,
                             headers={"X-Sig": hints.sign(secret, body, scheme)})
            assert r.status_code == 202
        r = await c.post(URL, content=raw,
                         headers={"X-Dentally-Signature": hints.sign("new", raw)})
        assert r.status_code == 401
    assert [h.resource for h in w.got] == ["payments", "payments"]


async def test_forwarded_for_is_logged_only_from_trusted_proxies(
        caplog: pytest.LogCaptureFixture) -> None:
    for trusted, want in ((["127.0.0.1"], "6.6.6.6"), ([], "127.0.0.1")):
        w = World(IngestConfig(trusted_proxies=trusted))
        transport = httpx.ASGITransport(app=w.ingest.app(), client=("127.0.0.1", 5555))
        caplog.clear()
        async with httpx.AsyncClient(transport=transport) as c:
            with caplog.at_level(logging.WARNING, "notifier.ingest"):
                await c.post(URL, content=b"{}", headers={"X-Forwarded-For": "6.6.6.6"})
        assert f"(from {want};" in caplog.text


async def test_a_reload_takes_the_new_secret_and_keeps_the_replay_memory() -> None:
    w = World()
    raw, headers = signed({"event": "patient.updated", "data": {"id": 1}})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=w.ingest.app())) as c:
        assert (await c.post(URL, content=raw, headers=headers)).status_code == 202
        w.ingest.configure(IngestConfig(), [practice(webhook_secret="rotated")])
        assert (await c.post(URL, content=raw, headers=headers)).status_code == 401
        again = {"X-Dentally-Signature": hints.sign("rotated", raw)}
        r = await c.post(URL, content=raw, headers=again)
        assert r.status_code == 202 and r.json()["ignored"] == "seen before"
        w.ingest.configure(IngestConfig(), [practice(webhook_secret=None)])
        assert (await c.post(URL, content=raw, headers=again)).status_code == 404
    assert len(w.got) == 1


async def test_a_body_that_trickles_is_cut_off_and_hands_nothing_on(
        world: World, http: httpx.AsyncClient) -> None:
    """256 slow-body connections would hold every slot of the endpoint: a body gets
    ``body_timeout`` to arrive."""
    raw, headers = signed({"object": "patient", "data": {"id": 5}})
    world.ingest.body_timeout = 0.2

    async def trickle() -> AsyncIterator[bytes]:
        for byte in raw:
            yield bytes([byte])
            await anyio.sleep(0.05)
    t0 = time.perf_counter()
    r = await http.post(URL, content=trickle(), headers=headers)
    assert r.status_code == 408 and time.perf_counter() - t0 < 2
    assert world.got == [] and world.count("too_slow") == 1
