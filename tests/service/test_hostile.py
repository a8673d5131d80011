"""Ingestion against a hostile world (issue 8): a bad Date header, unstable pages over rows
sharing one timestamp, a row deleted and another created while paging, a lost compression
dictionary, a record stamped in the future, and a sweep that would delete too much.

Each test reproduces a case that lost changes or got stuck, with the sandbox and a real
Redis, and checks the promise (PRODUCT.md, promises 1 and 3) holds now.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from notifier.core.timefmt import parse_ms
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.sandbox.state import Sandbox
from notifier.service.poller import ResourcePoller
from notifier.store.keys import Keys
from notifier.store.redis import Store
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import write_config
from tests.service.test_poller import make_poller
from tests.test_cli import run_cli

MIN10 = 600_000


def counting(poller: ResourcePoller) -> Counter[str]:
    stats: Counter[str] = Counter()
    poller.on_stat = lambda name, n: stats.update({name: n})
    return stats


async def test_edits_after_a_three_response_date_blip_are_published(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Item 1: one load-balancer node 10 minutes ahead answers three requests (the
    keep-alive among them); every edit made after it is published by the next poll."""
    await control.seed("patients", 60, spread_days=1)
    poller = make_poller(store, sandbox, initial_sync="seed")
    assert await poller.poll_once() == 0
    await control.quirks(date_offsets=[MIN10] * 3)
    for _ in range(3):
        await poller.client.user()
    first = await control.mutate("patients", count=3)
    assert await poller.poll_once() == 3
    second = await control.mutate("patients", count=4)
    assert await poller.poll_once() == 4
    events = await stream_events(store.redis, store.stream)
    assert sorted(e["data"]["record_id"] for e in events) == sorted(first + second)
    cursor = (await store.progress("main", "patients")).cursor
    assert cursor is not None and cursor <= (await control.clock())["now_ms"]
    await poller.client.aclose()


SEEDS = (1, 2, 3)   # the sandbox's randomness: a lucky clean read must not pass the test


async def shared_timestamps(redis: Redis, ns: Namespace, seed: int, initial_sync: str
                            ) -> AsyncIterator[tuple[ResourcePoller, SandboxControl,
                                                     list[str]]]:
    """A sandbox (its own random seed) with 300 patients sharing one updated_at, and a
    poller on its own key prefix."""
    with SandboxThread(Sandbox(seed=seed)) as sandbox:
        control = SandboxControl(sandbox.url)
        now = (await control.clock())["now_ms"]
        ids = await control.seed("patients", 300, at_ms=now - 60_000)
        store = Store(redis, Keys(f"{ns.prefix}-{seed}"), f"{ns.prefix}-{seed}:events")
        poller = make_poller(store, sandbox, initial_sync=initial_sync)
        try:
            yield poller, control, ids
        finally:
            await poller.client.aclose()
            await control.aclose()


async def test_a_backfill_of_rows_sharing_one_timestamp_on_unstable_pages_ends(
        redis: Redis, ns: Namespace) -> None:
    """Item 2: 300 rows with one updated_at (a bulk import) cannot be split by time; with
    3% of rows per page repeated and skipped, an `emit` backfill used to re-read pages 1-3
    until a read happened to be clean (for ever, in effect: well under 1% of reads are).
    The union of a few steady-count reads completes it: every row once, a bounded cost."""
    for seed in SEEDS:
        async for poller, control, ids in shared_timestamps(redis, ns, seed, "emit"):
            store = poller.store
            await control.quirks(unstable_rate=0.03)
            stats = counting(poller)
            with anyio.fail_after(60):
                published = await poller.poll_once()
            events = await stream_events(store.redis, store.stream)
            assert published == 300
            assert sorted(e["data"]["record_id"] for e in events) == sorted(ids)
            assert stats["rereads"] >= 1 and poller.pages <= 12, (seed, poller.pages)
            raw = await store.redis.hgetall(store.keys.cursor("main", "patients"))
            note = {k.decode(): v.decode() for k, v in raw.items()}
            assert "re-read" in note["reread_note"] and note["window_waiting"] == ""
            assert (await store.progress("main", "patients")).synced


async def test_a_sweep_over_shared_timestamps_on_unstable_pages_ends_without_false_deletions(
        redis: Redis, ns: Namespace) -> None:
    """Item 2, the reconciliation sweep: it ends, publishes the real deletions and no
    false one (an id it did not see is fetched on its own; a 404 confirms it)."""
    for seed in SEEDS:
        async for poller, control, ids in shared_timestamps(redis, ns, seed, "seed"):
            store = poller.store
            assert await poller.poll_once() == 0
            for rid in ids[10:15]:
                await control.delete("patients", rid)
            await control.quirks(unstable_rate=0.03)
            pages = poller.pages
            with anyio.fail_after(60):
                deleted, other = await poller.reconcile()
            assert (deleted, other) == (5, 0)
            assert poller.pages - pages <= 3 * 8, (seed, poller.pages - pages)
            events = await stream_events(store.redis, store.stream)
            assert sorted(e["data"]["record_id"] for e in events) == sorted(ids[10:15])
            assert {e["type"] for e in events} == {"patient.deleted"}


async def test_an_open_window_misses_no_row_when_one_is_deleted_and_one_created_mid_read(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Item 3: appointments (no updated_before) read over two pages; after page 1 a row
    already read is deleted and a new one created. The counts still agree, but the row
    that slid onto page 1 was never read; once the overlap has passed (a catch-up after
    downtime) no later poll finds it."""
    ids = await control.seed("appointments", 250, spread_days=3)
    poller = make_poller(store, sandbox, resource="appointments", initial_sync="seed",
                         overlap_ms=1000)
    assert await poller.poll_once() == 0
    cursor = (await store.progress("main", "appointments")).cursor
    assert cursor is not None
    await anyio.sleep(2.5)
    for rid in ids[:150]:   # two pages of changes, made after the cursor
        await control.update("appointments", rid, at_ms=cursor + 500)
    await control.quirks(between_pages=[{"resource": "appointments", "after_page": 1,
                                         "delete": 1, "create": 1}])
    await poller.poll_once()
    await anyio.sleep(1.5)   # past the overlap: a catch-up after downtime
    await poller.poll_once()
    events = await stream_events(store.redis, store.stream)
    updated = {e["data"]["record_id"] for e in events if e["type"] == "appointment.updated"}
    survivors = {str(r["id"]) for r in await control.records("appointments")}
    assert len(survivors & set(ids[:150])) == 149
    assert survivors & set(ids[:150]) <= updated
    await poller.client.aclose()


async def test_a_failed_first_commit_never_loses_the_dictionary(
        store: Store, sandbox: SandboxThread, control: SandboxControl,
        monkeypatch: pytest.MonkeyPatch, ns: Namespace) -> None:
    """Item 4: the dictionary is learned on the first page and adopted in memory; that
    commit fails (a Redis blip). The retry's snapshots must not name a dictionary that
    was never stored: after a restart an edit is an update with its changes."""
    ids = await control.seed("patients", 40, spread_days=2)
    poller = make_poller(store, sandbox, initial_sync="emit")
    script = store._commit
    calls = 0

    async def blip(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("connection reset by peer")
        return await script(*args, **kwargs)

    monkeypatch.setattr(store, "_commit", blip)
    with pytest.raises(RedisConnectionError):
        await poller.poll_once()
    assert await poller.poll_once() == 40
    await poller.client.aclose()

    restarted = Store(store.redis, Keys(ns.prefix), ns.stream)
    again = make_poller(restarted, sandbox, initial_sync="emit")
    await control.update("patients", ids[5], email_address="new@example.com")
    assert await again.poll_once() == 1
    event = (await stream_events(store.redis, store.stream))[-1]
    assert event["type"] == "patient.updated"
    assert event["data"]["changes"]["email_address"][1] == "new@example.com"
    await again.client.aclose()


async def test_a_snapshot_that_does_not_decode_is_treated_as_missing(
        store: Store, sandbox: SandboxThread, control: SandboxControl,
        caplog: pytest.LogCaptureFixture) -> None:
    """Item 4: a snapshot that inflates to garbage (an old blob, a foreign dictionary)
    used to raise JSONDecodeError on every poll, for ever. Now it is logged once with its
    key, counted, and the record is read as new; the resource goes on."""
    ids = await control.seed("patients", 30, spread_days=2)
    poller = make_poller(store, sandbox, initial_sync="emit")
    stats = counting(poller)
    assert await poller.poll_once() == 30
    zdict = await store.redis.get(store.keys.zdict("main", "patients"))
    assert zdict
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 6, zlib.Z_DEFAULT_STRATEGY, zdict)
    garbage = b"\x02" + packer.compress(b"not json {") + packer.flush()
    await store.redis.hset(store.keys.snapshots("main", "patients"), ids[3], garbage)
    await control.update("patients", ids[3], email_address="x@example.com")
    with caplog.at_level(logging.WARNING, logger="notifier.poller"):
        assert await poller.poll_once() == 1
        assert await poller.poll_once() == 0
    (event,) = (await stream_events(store.redis, store.stream))[30:]
    assert event["type"] == "patient.created" and event["data"]["record_id"] == ids[3]
    warned = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1
    assert store.keys.snapshots("main", "patients") in warned[0].getMessage()
    assert stats["unreadable"] == 1
    await poller.client.aclose()


async def test_an_edit_of_a_record_stamped_in_the_future_is_published(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Item 5: an app server with a fast clock stamps a record an hour ahead; the next real
    edit carries an older updated_at and used to be dropped as a stale copy."""
    ids = await control.seed("patients", 20, spread_days=1)
    now = (await control.clock())["now_ms"]
    await control.update("patients", ids[0], at_ms=now + 3_600_000)
    poller = make_poller(store, sandbox, initial_sync="seed")
    assert await poller.poll_once() == 0
    edited = await control.update("patients", ids[0], email_address="real@example.com")
    assert parse_ms(edited["updated_at"]) < now + 3_600_000
    assert await poller.poll_once() == 1
    (event,) = await stream_events(store.redis, store.stream)
    assert event["type"] == "patient.updated"
    assert event["data"]["changes"]["email_address"][1] == "real@example.com"
    await poller.client.aclose()


async def test_an_edit_read_after_real_time_passed_a_future_stamp_is_published(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Residual of item 5 (campaign seed 202): a record stamped an hour ahead is seen; a
    real edit (stamped before that hour) is read only after the server's clock passed the
    stamp (a catch-up after downtime). It used to be dropped as a stale copy for ever."""
    ids = await control.seed("patients", 20, spread_days=1)
    now = (await control.clock())["now_ms"]
    await control.update("patients", ids[0], at_ms=now + 3_600_000)
    poller = make_poller(store, sandbox, initial_sync="seed")
    assert await poller.poll_once() == 0
    await poller.client.aclose()
    edited = await control.update("patients", ids[0], email_address="real@example.com")
    assert parse_ms(edited["updated_at"]) < now + 3_600_000
    await control.clock(advance_ms=2 * 3_600_000)
    poller = make_poller(store, sandbox, initial_sync="seed")   # a restart, two hours on
    assert await poller.poll_once() == 1
    (event,) = await stream_events(store.redis, store.stream)
    assert event["type"] == "patient.updated"
    assert event["data"]["changes"]["email_address"][1] == "real@example.com"
    # A record seen with a stamp in the past keeps the stale-copy rule.
    assert await poller.poll_once() == 0
    await poller.client.aclose()


async def test_a_record_confirmed_right_after_its_edit_keeps_the_stale_copy_rule(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Review of item 5: a webhook hint's record is fetched a moment after its edit. The
    server-clock estimate (a lower bound: ``Date`` has whole seconds) was behind that
    stamp, so the snapshot was marked stamped in the future and lost the stale-copy guard:
    an older copy served next (a lagging replica) was published as an update back, and
    the record read again would have been published a second time under the same id."""
    ids = await control.seed("patients", 20, spread_days=1)
    poller = make_poller(store, sandbox, initial_sync="seed")
    assert await poller.poll_once() == 0
    old = next(r for r in await control.records("patients") if str(r["id"]) == ids[0])
    edited = await control.update("patients", ids[0], email_address="new@example.com")
    assert await poller.confirm([ids[0]]) >= 1          # the update (and what it derives)
    (blob,) = await store.snapshots("main", "patients", [ids[0]])
    assert blob is not None and blob[:1] != b"\x04"     # not stamped in the future
    # The older copy again (as a lagging replica serves it): a stale copy, not a change.
    await control.update("patients", ids[0], email_address=old["email_address"],
                         at_ms=parse_ms(old["updated_at"]))
    assert await poller.confirm([ids[0]]) == 0
    (event,) = await stream_events(store.redis, store.stream)
    assert event["data"]["record"]["updated_at"] == edited["updated_at"]
    await poller.client.aclose()


async def test_an_edit_reverted_between_two_polls_publishes_the_new_version(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Campaign seed 101 (patients/1081): an edit and its revert land while the daemon is
    down (kill -9). The record then differs from its snapshot only in updated_at, and that
    version, which Dentally shows for good, used to be stored silently as a "touch":
    never published, not even by a sweep."""
    ids = await control.seed("patients", 20, spread_days=1)
    before = next(r for r in await control.records("patients") if str(r["id"]) == ids[0])
    poller = make_poller(store, sandbox, initial_sync="seed")
    assert await poller.poll_once() == 0
    await control.update("patients", ids[0], recall_interval=before["recall_interval"] + 1)
    after = await control.update("patients", ids[0],
                                 recall_interval=before["recall_interval"])
    assert await poller.poll_once() == 1
    (event,) = await stream_events(store.redis, store.stream)
    assert event["type"] == "patient.updated"
    assert event["data"]["record"] == after
    assert event["data"]["changes"] == {"updated_at": [before["updated_at"],
                                                       after["updated_at"]]}
    assert await poller.poll_once() == 0
    assert await poller.reconcile() == (0, 0)
    await poller.client.aclose()


async def test_a_sweep_that_would_delete_too_much_fails_closed_until_accepted(
        tmp_path: Path, redis_url: str, ns: Namespace, store: Store,
        sandbox: SandboxThread, control: SandboxControl) -> None:
    """Item 7: 30 of 100 records gone (a key reading another practice, a truncated
    listing): more than max_delete_fraction (0.2). No deletion is published, one
    notifier.reconcile.suspicious says so, polling goes on; `reconcile --accept` lets the
    next sweep publish them."""
    ids = await control.seed("patients", 100, spread_days=5)
    poller = make_poller(store, sandbox, initial_sync="seed")
    stats = counting(poller)
    assert await poller.poll_once() == 0
    for rid in ids[:30]:
        await control.delete("patients", rid)
    assert await poller.reconcile() == (0, 0)
    assert await poller.reconcile() == (0, 0)
    (alarm,) = await stream_events(store.redis, store.stream)
    assert alarm["type"] == "notifier.reconcile.suspicious"
    data = alarm["data"]
    assert (data["practice"], data["resource"]) == ("main", "patients")
    assert (data["tracked"], data["would_delete"]) == (100, 30)
    assert "--accept" in data["action"] and stats["suspicious"] == 1
    await control.mutate("patients", ids=[ids[50]])
    assert await poller.poll_once() == 1   # polling goes on meanwhile

    cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url=sandbox.url, key=sandbox.key or "")
    status = run_cli("status", "--config", str(cfg))
    assert "DELETIONS HELD" in status.stdout, status.stdout + status.stderr
    done = run_cli("reconcile", "main", "patients", "--accept", "--config", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    assert await poller.sweep_requested()
    assert await poller.reconcile() == (30, 0)
    assert not await poller.sweep_requested()
    events = await stream_events(store.redis, store.stream)
    assert Counter(e["type"] for e in events) == {"notifier.reconcile.suspicious": 1,
                                                  "patient.updated": 1, "patient.deleted": 30}
    raw = await store.redis.hget(store.keys.cursor("main", "patients"), "reconcile_held")
    assert not raw
    done = run_cli("reconcile", "main", "patients", "--accept", "--config", str(cfg))
    assert done.returncode == 3 and "nothing to accept" in done.stdout
    assert json.loads(run_cli("status", "--json", "--config", str(cfg)).stdout)[
        "practices"][0]["resources"][0]["deletions_held"] is None
    await poller.client.aclose()


async def test_records_a_sweep_refinds_count_in_the_events_metric(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Item 7: a payment moved out of the dated listing (back-dated) and edited is not
    listed by the sweep; fetched on its own, its change is published and counted like
    any other event."""
    ids = await control.seed("payments", 5)
    poller = make_poller(store, sandbox, resource="payments", initial_sync="seed")
    counted: list[str] = []
    poller.on_events = lambda events: counted.extend(e.type for e in events)
    assert await poller.poll_once() == 0
    await control.update("payments", ids[0], dated_on="2020-01-01", amount="1.0")
    assert await poller.reconcile() == (0, 1)
    (event,) = await stream_events(store.redis, store.stream)
    assert event["type"] == "payment.updated" and counted == ["payment.updated"]
    await poller.client.aclose()
