"""Reconciliation: deletions found by a full sweep, confirmed by a 404, published once;
rows an unstable page skipped are never reported deleted."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from notifier.core.timefmt import parse_ms
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.service.poller import reread_note
from notifier.store.redis import Store
from tests.helpers import stream_events
from tests.service.test_poller import make_poller


async def test_deletions_found_once_and_skipped_rows_are_not_deleted(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    ids = await control.seed("patients", 600, spread_days=30)
    poller = make_poller(store, sandbox, initial_sync="seed", per_page=50, window_rows=400)
    assert await poller.poll_once() == 0
    gone = ids[100:107]
    last_known = {rid: r for rid, r in
                  ((str(r["id"]), r) for r in await control.records("patients"))
                  if rid in gone}
    for rid in gone:
        await control.delete("patients", rid)
    await control.quirks(unstable_rate=0.05)   # sweeps skip rows too
    deleted, other = await poller.reconcile()
    assert (deleted, other) == (7, 0)
    events = await stream_events(store.redis, store.stream)
    assert Counter(e["type"] for e in events) == {"patient.deleted": 7}
    for e in events:
        assert e["data"]["record"] == last_known[e["data"]["record_id"]]
    assert await poller.reconcile() == (0, 0)   # nothing twice
    assert len(await stream_events(store.redis, store.stream)) == 7
    assert await store.redis.hlen(store.keys.snapshots("main", "patients")) == 593
    await poller.client.aclose()


async def test_sweep_publishes_changes_the_polls_missed(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    ids = await control.seed("patients", 50, spread_days=30)
    now = (await control.clock())["now_ms"]
    await control.update("patients", ids[3], at_ms=now - 5 * 86_400_000)
    poller = make_poller(store, sandbox, initial_sync="seed")
    await poller.poll_once()
    # A change stamped in the past (a backdated import) is below every cursor.
    old = next(r for r in await control.records("patients") if str(r["id"]) == ids[3])
    await control.update("patients", ids[3], email_address="late@example.com",
                         at_ms=parse_ms(old["updated_at"]) + 1000)
    assert await poller.poll_once() == 0
    assert await poller.reconcile() == (0, 1)
    (event,) = await stream_events(store.redis, store.stream)
    assert event["type"] == "patient.updated"
    assert event["data"]["changes"]["email_address"][1] == "late@example.com"
    await poller.client.aclose()


async def test_unstable_pages_and_413_backfill_publish_one_event_per_record(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """2% of rows repeated and 2% skipped at every page boundary, 413 past 2,000 rows:
    a 10,000-record backfill plus one sweep publishes exactly one event per record."""
    ids = await control.seed("patients", 10_000, spread_days=365)
    await control.quirks(unstable_rate=0.02, deep_page_limit=2000)
    poller = make_poller(store, sandbox, initial_sync="emit", window_rows=5000)
    published = await poller.poll_once()
    deleted, swept = await poller.reconcile()
    assert deleted == 0
    assert published + swept == 10_000
    events = await stream_events(store.redis, store.stream)
    assert Counter(e["type"] for e in events) == {"patient.created": 10_000}
    assert {e["data"]["record_id"] for e in events} == set(ids)
    await poller.client.aclose()


async def test_sweep_log_counts_read_as_english(
        store: Store, sandbox: SandboxThread, control: SandboxControl,
        caplog: pytest.LogCaptureFixture) -> None:
    """Item 4 of issue 8: no "1 skipped rows" / "re-read windows 1 times"."""
    ids = await control.seed("patients", 20, spread_days=3)
    poller = make_poller(store, sandbox, initial_sync="seed")
    await poller.poll_once()
    await control.delete("patients", ids[0])
    with caplog.at_level(logging.INFO, logger="notifier.poller"):
        assert await poller.reconcile() == (1, 0)
    assert "reconciliation: 1 deleted, 0 skipped rows found" in caplog.text
    assert reread_note("poll", 1, 0, False) == "poll re-read windows 1 time; all read completely"
    assert reread_note("sweep", 2, 1, True) == (
        "sweep re-read windows 2 times; 1 window still incomplete, retried next poll")
    await poller.client.aclose()


class _Killed(Exception):
    """The daemon stopped mid-sweep (a deploy, a crash)."""


async def test_a_sweep_interrupted_by_a_restart_continues_where_it_was(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Found by the fault campaign's soak: with the daemon restarted every few seconds, a
    sweep that started over each time never finished, so no deletion was ever published."""
    ids = await control.seed("patients", 600, spread_days=30)
    policy = {"per_page": 50, "window_rows": 100}
    first = make_poller(store, sandbox, initial_sync="seed", **policy)
    await first.poll_once()
    await control.delete("patients", ids[5])      # in the sweep's first windows
    await control.delete("patients", ids[590])    # in its last ones
    pages = 0

    def beat() -> None:
        nonlocal pages
        pages += 1
        if pages == 40:
            raise _Killed

    first.heartbeat = beat
    try:
        await first.reconcile()
    except* _Killed:
        pass
    assert await stream_events(store.redis, store.stream) == []
    assert await store.redis.scard(store.keys.sweep("main", "patients")) >= 200
    # A new process: the sweep is due at once and goes on from the window it was reading.
    second = make_poller(store, sandbox, initial_sync="seed", **policy)
    assert await second.sweep_requested()
    assert await second.reconcile() == (2, 0)
    events = await stream_events(store.redis, store.stream)
    assert sorted(e["data"]["record_id"] for e in events) == sorted([ids[5], ids[590]])
    full = make_poller(store, sandbox, initial_sync="seed", **policy)
    assert await full.reconcile() == (0, 0)
    assert second.pages <= full.pages - 20, (second.pages, full.pages)
    # Finished: nothing left over, the next sweep starts from the beginning.
    assert not await full.sweep_requested()
    assert not await store.redis.exists(store.keys.sweep("main", "patients"))
    for p in (first, second, full):
        await p.client.aclose()


async def test_a_sweep_lists_cancelled_appointments_and_fetches_none_alone(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """Cancelled and did-not-attend appointments are listed (``cancelled=true``), so a
    sweep sees them and has no id left to fetch on its own (the 404 rule)."""
    ids = await control.seed("appointments", 120, spread_days=10)
    poller = make_poller(store, sandbox, resource="appointments", initial_sync="seed")
    await poller.poll_once()
    for n, rid in enumerate(ids[:40]):
        await control.update("appointments", rid,
                             state="Cancelled" if n % 2 else "Did not attend")
    await poller.poll_once()
    start = (await control.ledger())["requests_seq"]
    assert await poller.reconcile() == (0, 0)
    paths = [r["path"] for r in (await control.ledger(requests_since=start))["requests"]]
    assert paths and all(p.endswith("/appointments") for p in paths), paths
    await poller.client.aclose()


async def test_a_sweeps_single_fetches_yield_to_the_polls_and_continue(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    """The 30-minute soak's sweeps fetched thousands of ids one by one and held the polls
    meanwhile. A pass stops fetching after ``sweep_fetch_seconds`` (here at once: one id
    per pass); the next pass continues with the ids left, asks for none twice, and only
    the pass that settles the last one publishes the deletions."""
    ids = await control.seed("patients", 200, spread_days=30)
    poller = make_poller(store, sandbox, initial_sync="seed")
    await poller.poll_once()
    for rid in ids[10:15]:
        await control.delete("patients", rid)
    poller.sweep_fetch_seconds = 0.0
    start = (await control.ledger())["requests_seq"]
    for _ in range(4):
        assert await poller.reconcile() == (0, 0)
        assert await poller.sweep_requested()
        assert await stream_events(store.redis, store.stream) == []
    assert await poller.reconcile() == (5, 0)
    assert not await poller.sweep_requested()
    paths = [r["path"] for r in (await control.ledger(requests_since=start))["requests"]]
    singles = [p for p in paths if not p.endswith("/patients")]
    assert sorted(p.rpartition("/")[2] for p in singles) == sorted(ids[10:15])
    events = await stream_events(store.redis, store.stream)
    assert sorted(e["data"]["record_id"] for e in events) == sorted(ids[10:15])
    await poller.client.aclose()
