"""What each subscriber receives, and erasing a record, through the daemon as a real
process against the sandbox and a real Redis (issue 13, sections 2 and 3)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from notifier import signing
from notifier.core.shaping import ENVELOPE_THIN
from notifier.ops.http import free_port
from notifier.sandbox.control import SandboxControl
from notifier.store.codec import Codec
from notifier.store.delivery import groups
from notifier.store.keys import Keys
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until
from tests.receiver import Received, Receiver, Reply
from tests.test_cli import run_cli as cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEADER_SECRET = "Bearer crm-token-4f1d9c"
ALLOWED = {"id", "first_name", "last_name", "email_address", "updated_at"}
EXCLUDED = {"date_of_birth", "nhs_number", "medical_alert", "mobile_phone", "home_phone"}


def sub(url: str, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": f"{url}/{name}", "secret": SECRET, "allow_private": True,
            "start": "beginning", "retry_schedule": [0.05], **kw}


async def drained(redis: Redis, stream: str, names: list[str]) -> bool:
    info = await groups(redis, stream)
    return all(n in info and info[n]["lag"] == 0 and info[n]["pending"] == 0
               for n in names)


def bodies(rx: Receiver, name: str) -> list[tuple[Received, dict[str, Any]]]:
    return [(r, json.loads(r.body)) for r in rx.received if r.path == f"/hook/{name}"]


def keys_in(value: Any) -> set[str]:
    """Every key at any depth of a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(keys_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_in(v) for v in value))
    return set()


async def test_each_subscriber_receives_only_what_it_may(
        redis: Redis, ns: Namespace, control: SandboxControl, tmp_path: Path,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 40, spread_days=5)
    await control.seed("appointments", 20, spread_days=5)
    north = {str((await control.create("patients", site_id="site-north"))["id"])
             for _ in range(5)}
    port = free_port()
    with Receiver() as rx:
        subs = [
            sub(rx.url, "thin", payload="thin"),
            sub(rx.url, "allow", fields={"patients": sorted(ALLOWED)},
                events=["patient.*"]),
            sub(rx.url, "excl", exclude_fields=sorted(EXCLUDED)),
            sub(rx.url, "changes", payload="changes", exclude_fields=sorted(EXCLUDED)),
            sub(rx.url, "ce", format="cloudevents", changed=["patient.email_address"],
                headers={"Authorization": {"env": "TEST_CRM_TOKEN"}}),
            sub(rx.url, "north", sites=["site-north"], practices=["main"]),
            sub(rx.url, "full"),
        ]
        daemon = daemon_factory(resources=["patients", "appointments"], initial_sync="emit",
                                subscribers=subs, metrics_listen=f"127.0.0.1:{port}")
        daemon.start(TEST_CRM_TOKEN=HEADER_SECRET)
        names = [s["name"] for s in subs]

        async def created() -> bool:
            return len(bodies(rx, "full")) >= 65 and await drained(redis, ns.stream, names)
        await wait_until(created, 60, "the created events delivered to every subscriber")
        patients = sorted({b["data"]["record_id"] for _, b in bodies(rx, "full")
                           if b["data"]["resource"] == "patients"}, key=int)
        # Changes of excluded fields only, of allowed fields, and of both.
        hidden = [await control.update("patients", p, date_of_birth="1950-05-05")
                  for p in patients[:5]]
        shown = [await control.update("patients", p, email_address=f"new{p}@example.com")
                 for p in patients[5:10]]
        both = [await control.update("patients", p, nhs_number="485 777 3456",
                                     last_name="Changed") for p in patients[10:13]]

        async def updated() -> bool:
            n = sum(b["type"] == "patient.updated" for _, b in bodies(rx, "full"))
            return n >= 13 and await drained(redis, ns.stream, names)
        await wait_until(updated, 60, "the updates delivered")
        async with httpx.AsyncClient() as c:
            metrics = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
        daemon.stop()

    hidden_ids = {str(r["id"]) for r in hidden}
    shown_ids = {str(r["id"]) for r in shown}
    both_ids = {str(r["id"]) for r in both}

    # thin: ids, type and updated_at, never a field of the record
    thin = bodies(rx, "thin")
    assert len(thin) == len(bodies(rx, "full"))
    for _, b in thin:
        assert set(b["data"]) <= set(ENVELOPE_THIN), b
        assert "record" not in b["data"] and "changes" not in b["data"]
    # (thin has no field rule: the date_of_birth edits reach it, without the date)
    assert hidden_ids <= {b["data"]["record_id"] for _, b in thin
                          if b["type"] == "patient.updated"}

    # allow-list: patient records and changes carry allowed fields only
    allow = bodies(rx, "allow")
    assert allow and all(b["type"].startswith("patient.") for _, b in allow)
    for _, b in allow:
        assert set(b["data"]["record"]) <= ALLOWED, b
        assert set(b["data"].get("changes", {})) <= ALLOWED, b
    allow_updates = {b["data"]["record_id"] for _, b in allow if b["type"] == "patient.updated"}
    assert allow_updates == shown_ids | both_ids  # the date_of_birth edits never arrive

    # deny-list and changes mode: no excluded field anywhere in any body
    for name in ("excl", "changes"):
        got = bodies(rx, name)
        assert got
        for _, b in got:
            assert not keys_in(b) & EXCLUDED, (name, b)
        updates = {b["data"]["record_id"] for _, b in got if b["type"] == "patient.updated"}
        assert updates == shown_ids | both_ids, name
    for _, b in bodies(rx, "changes"):
        assert "record" not in b["data"]
        assert b["data"]["ids"]["id"] == int(b["data"]["record_id"])
    for _, b in bodies(rx, "excl"):
        if b["data"]["record_id"] in both_ids and b["type"] == "patient.updated":
            assert set(b["data"]["changes"]) == {"last_name", "updated_at"}

    # CloudEvents, signed, with the subscriber's own header; only email changes as updates
    ce = bodies(rx, "ce")
    assert ce
    for r, b in ce:
        assert b["specversion"] == "1.0" and b["source"] == "dentally://sandbox/main"
        assert b["subject"] == f"{b['data']['resource']}/{b['data']['record_id']}"
        assert r.headers["content-type"].startswith("application/cloudevents+json")
        assert r.headers["authorization"] == HEADER_SECRET
        signing.verify([SECRET], r.headers, r.body, time.time())
    assert {b["data"]["record_id"] for _, b in ce if b["type"] == "patient.updated"} \
        == shown_ids

    # sites: patients of that site only; appointments carry no site and pass
    got = bodies(rx, "north")
    assert {b["data"]["record_id"] for _, b in got if b["data"]["resource"] == "patients"
            and b["type"] == "patient.created"} == north
    assert any(b["data"]["resource"] == "appointments" for _, b in got)

    # skipped updates are acknowledged (drained above) and counted
    assert 'deliveries_skipped_total{reason="excluded_only",subscriber="allow"} 5.0' in metrics
    assert 'deliveries_skipped_total{reason="changed",subscriber="ce"} 8.0' in metrics
    assert HEADER_SECRET not in daemon.log.read_text()


def blobs(value: Any) -> bytes:
    """Every byte a Redis value holds, as one blob to search."""
    if isinstance(value, (bytes, str)):
        return value.encode() if isinstance(value, str) else value
    if isinstance(value, dict):
        return b"\x00".join(blobs(k) + b"\x00" + blobs(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return b"\x00".join(blobs(v) for v in value)
    return str(value).encode()


async def dump(redis: Redis, ns: Namespace) -> dict[str, bytes]:
    """Every key of the test's prefix (and its stream) with everything it holds."""
    out: dict[str, bytes] = {}
    async for raw in redis.scan_iter(match=f"{ns.prefix}*", count=1000):
        key = raw.decode()
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await redis.xrange(key)
            for g in await redis.xinfo_groups(key):
                value.append(await redis.xpending_range(key, g["name"], "-", "+", 10_000))
        else:
            raise AssertionError(f"{key}: unexpected type {kind}")
        out[key] = blobs(value)
    return out


async def test_forget_leaves_no_trace_of_the_record(
        redis: Redis, ns: Namespace, control: SandboxControl, tmp_path: Path,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 14, spread_days=2)
    marked = await control.create("patients", first_name="Zebedee", last_name="Quxworthy",
                                  email_address="zq.forget-me@example.com",
                                  mobile_phone="07999123456")
    rid = str(marked["id"])
    with Receiver(lambda r, n: Reply(500) if r.path == "/hook/broken" else Reply()) as rx:
        daemon = daemon_factory(resources=["patients"], initial_sync="emit", subscribers=[
            sub(rx.url, "good"), sub(rx.url, "broken", retry_schedule=[0.01])])
        daemon.start()

        async def delivered() -> bool:
            dead = await redis.xlen(Keys(ns.prefix).sub("broken", "dead"))
            return dead >= 15 and await drained(redis, ns.stream, ["good", "broken"])
        await wait_until(delivered, 60, "the created events delivered and dead-lettered")
        await control.update("patients", rid, email_address="zq.still-me@example.com")

        async def updated() -> bool:
            dead = await redis.xlen(Keys(ns.prefix).sub("broken", "dead"))
            # (the update and its derived patient.contact_changed)
            return dead >= 17 and await drained(redis, ns.stream, ["good", "broken"])
        await wait_until(updated, 60, "the update delivered and dead-lettered")
        busy = cli("forget", "main", "patients", rid, "--config", str(daemon.config))
        assert busy.returncode == 3, busy.stdout + busy.stderr
        assert "is being polled" in busy.stdout
        daemon.stop()
    markers = [b"Zebedee", b"Quxworthy", b"zq.forget-me", b"zq.still-me", b"07999123456"]
    keys = Keys(ns.prefix)
    before = await dump(redis, ns)
    # the record is everywhere: stream, dead letters, snapshot, and the dictionary
    assert any(b"Quxworthy" in v for k, v in before.items() if k == ns.stream)
    assert b"Quxworthy" in before[keys.sub("broken", "dead")]
    assert b"Quxworthy" in before[keys.zdict("main", "patients")]
    event_ids = {f[b"id"] for _, f in await redis.xrange(ns.stream)
                 if f.get(b"record_id") == rid.encode()}
    assert len(event_ids) == 3   # created, updated, and the derived contact_changed

    done = cli("forget", "main", "patients", rid, "--config", str(daemon.config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 stream event(s), 3 dead letter(s)" in done.stdout
    assert "dictionary relearned" in done.stdout

    after = await dump(redis, ns)
    for key, value in after.items():
        for marker in markers:
            assert marker not in value, (key, marker)
        for eid in event_ids:
            assert eid not in value, (key, eid)
    for stream in (ns.stream, keys.sub("broken", "dead")):
        for _, f in await redis.xrange(stream):
            assert f.get(b"record_id") != rid.encode()
    assert not await redis.hexists(keys.snapshots("main", "patients"), rid)
    # every other snapshot still reads back, against the new dictionary
    codec = Codec(await redis.get(keys.zdict("main", "patients")))
    snaps = await redis.hgetall(keys.snapshots("main", "patients"))
    assert len(snaps) == 14
    assert all(codec.decode(b)["id"] for b in snaps.values())


async def test_redelivered_dead_letters_are_shaped_like_deliveries(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 3, spread_days=1)
    healthy = False
    with Receiver(lambda r, n: Reply(200 if healthy else 500)) as rx:
        daemon = daemon_factory(resources=["patients"], initial_sync="emit", subscribers=[
            sub(rx.url, "ce", format="cloudevents", exclude_fields=sorted(EXCLUDED),
                headers={"X-Token": "inline-token-77"})])
        daemon.start()

        async def dead() -> bool:
            return bool(await redis.xlen(Keys(ns.prefix).sub("ce", "dead")) == 3)
        await wait_until(dead, 30, "3 dead letters")
        daemon.stop()
        healthy = True
        failed = len(rx.received)
        done = cli("redeliver", "ce", "--config", str(daemon.config))
        assert done.returncode == 0 and "redelivered 3 of 3" in done.stdout, done.stdout
    assert failed == 6
    for r in rx.received:
        b = json.loads(r.body)
        assert b["specversion"] == "1.0" and not keys_in(b) & EXCLUDED
        assert r.headers["x-token"] == "inline-token-77"
        assert r.headers["content-type"].startswith("application/cloudevents+json")
        signing.verify([SECRET], r.headers, r.body, time.time())
    assert "inline-token-77" not in daemon.log.read_text() + done.stdout
