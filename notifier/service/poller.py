"""Polls one resource of one practice: windows from the cursor rules, pages from the client,
changes from the page diff, and one atomic commit per page.

The decisions live in :mod:`notifier.core` (``cursor``: windows and when a window is read
completely; ``diff``: what a page means against its snapshots; ``reconcile``: when
deletions fail closed); this module does the IO around them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from notifier.core import cursor
from notifier.core import reconcile as rules
from notifier.core.derive import derive
from notifier.core.diff import dedupe, page_diff, updated_ms
from notifier.core.resources import Resource
from notifier.core.text import plural
from notifier.core.timefmt import format_ms, format_us
from notifier.dentally.client import DentallyClient, Page
from notifier.errors import NotFound, PageTooDeep
from notifier.events import Event, canonical, derived_event, notifier_event, record_event
from notifier.store.codec import Codec, learn
from notifier.store.redis import DictionaryConflict, Store

log = logging.getLogger("notifier.poller")

ACCEPT_HINT = "dentally-notifier reconcile {practice} {resource} --accept"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PageChanges:
    events: list[Event]
    snapshots: dict[str, bytes]
    zdict: bytes | None
    """The dictionary the snapshots need, while it may not be stored yet."""


Unreadable = Callable[[str, Exception], None]


def changes_in(events: list[Event]) -> int:
    """How many changes ``events`` publish: derived events come with them, uncounted."""
    return sum(1 for e in events if not e.cause)


def changes_for_page(practice: str, resource: str, rows: list[dict[str, Any]],
                     olds: list[bytes | None], codec: Codec, *, emit_created: bool,
                     now: datetime, server_now: int | None = None,
                     unreadable: Unreadable | None = None) -> PageChanges:
    """Diff a page against its snapshots: the events to publish and snapshots to write.

    ``server_now``: the latest the server's time can have been when the rows were read
    (an upper bound, :meth:`DentallyClient.server_upper` once the response is in): a row
    stamped later is stamped in the future, and its snapshot remembers that time. A lower
    bound here would mark an ordinary record edited a second before it was read, and take
    away its stale-copy guard. None (no ``Date`` seen): stamps are trusted.

    A snapshot that cannot be read back is treated as missing (``unreadable`` hears of it).
    A dictionary learned here is adopted at once but stays pending, and goes with every
    commit of snapshots until one stores it."""
    canons = [canonical(r) for r in rows]
    if codec.zdict is None:
        zdict = learn(canons)
        if zdict is not None:
            codec.adopt(zdict)
    todo: list[tuple[dict[str, Any], bytes, dict[str, Any] | None, int | None]] = []
    for row, canon, blob in zip(rows, canons, olds, strict=True):
        old, seen = None, None
        if blob is not None:
            try:
                old_bytes, seen = codec.read(blob)
                if old_bytes == canon:
                    continue
                old = json.loads(old_bytes)
                if not isinstance(old, dict):
                    raise ValueError("snapshot is not a JSON object")
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
                if unreadable is not None:
                    unreadable(str(row["id"]), exc)
                old, seen = None, None
        todo.append((row, canon, old, seen))
    verdicts = page_diff([t[0] for t in todo], [t[2] for t in todo],
                         emit_created=emit_created, server_now=server_now,
                         seen_at=[t[3] for t in todo])
    events: list[Event] = []
    snaps: dict[str, bytes] = {}
    stamp = format_us(now)
    for (row, canon, old, _), verdict in zip(todo, verdicts, strict=True):
        if verdict.store:
            snaps[str(row["id"])] = codec.encode(canon, verdict.seen_at)
        if verdict.publish is not None:
            event = record_event(practice, resource, verdict.publish.kind, row, stamp,
                                 verdict.publish.changes, canon)
            events.append(event)
            # What the change means, right after it, in the same commit.
            events += [derived_event(event, d, row, stamp, canon)
                       for d in derive(resource, old, row)]
    return PageChanges(events, snaps, codec.pending() if snaps else None)


class _Prefetch:
    """One page requested ahead, while the previous one is diffed and committed.

    Its failure is kept and raised when the page is taken, never in the task group.
    """

    def __init__(self, key: tuple[cursor.Window, int], asked_at: int) -> None:
        self.key = key
        self.asked_at = asked_at
        self.done = anyio.Event()
        self.page: Page | None = None
        self.error: Exception | None = None

    async def run(self, fetch: Callable[[], Awaitable[Page]]) -> None:
        try:
            self.page = await fetch()
        except Exception as exc:  # re-raised in take()
            self.error = exc
        finally:
            self.done.set()

    async def take(self) -> Page:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.page is not None
        return self.page


class ResourcePoller:
    """Reads every change of one resource since its cursor and commits it page by page.

    While a page is diffed and committed, the next one is already requested when the
    cursor rules say it will be needed (the window continues), so the API's latency and
    our own work overlap; commits stay strictly in page order.
    """

    def __init__(self, store: Store, client: DentallyClient, practice: str,
                 resource: Resource, policy: cursor.Policy, *, initial_sync: str = "seed",
                 max_delete_fraction: float = 0.2,
                 now: Callable[[], datetime] = _utcnow,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.client = client
        self.practice = practice
        self.resource = resource
        self.policy = policy
        self.initial_sync = initial_sync
        self.max_delete_fraction = max_delete_fraction
        self._now = now
        self._wall = wall
        self.pages = 0
        self.heartbeat: Callable[[], None] | None = None
        """Called after every committed page: a long backfill is progress."""
        self.on_events: Callable[[list[Event]], object] | None = None
        """Called with the events of every committed page (metrics)."""
        self.on_stat: Callable[[str, int], object] | None = None
        """Called with ``(name, count)`` for the metrics: ``rereads`` (windows read again),
        ``incomplete`` (windows given up on for this poll, or accepted by a sweep from an
        incomplete union), ``unreadable`` (snapshots that did not decode), ``suspicious``
        (sweeps whose deletions were held)."""
        self.seen: set[str] | None = None
        """When a set, every id a poll reads is added to it (hinted ids it did not show
        are then fetched one by one: :meth:`confirm`)."""
        self.sweep_fetch_seconds: float | None = None
        """How long one pass of a sweep may spend fetching ids one by one (the 404 rule)
        before it returns, so that the loop polls again; the next pass continues with the
        ids left (each answer is kept). None: no limit (one pass finishes the sweep)."""
        self._first_sync: list[Any] | None = None
        self._unreadable_logged: set[str] = set()
        self._extra = {"practice": practice, "resource": resource.name}

    @property
    def closed(self) -> bool:
        return self.resource.closed_windows and self.resource.strategy == "incremental"

    def _stat(self, name: str, count: int = 1) -> None:
        if self.on_stat is not None and count:
            self.on_stat(name, count)

    def _events(self, events: list[Event]) -> None:
        if self.on_events is not None and events:
            self.on_events(events)

    def _unreadable(self, rid: str, exc: Exception) -> None:
        """A snapshot that does not decode: treated as missing, logged once, counted."""
        self._stat("unreadable")
        key = self.store.keys.snapshots(self.practice, self.resource.name)
        if rid in self._unreadable_logged or len(self._unreadable_logged) > 10_000:
            return
        self._unreadable_logged.add(rid)
        log.warning("snapshot %s field %s cannot be read (%s); treating the record as new",
                    key, rid, exc, extra=self._extra)

    async def _server_now(self) -> int:
        server_now = self.client.server_now()
        if server_now is None:
            await self.client.user()
            server_now = self.client.server_now()
        if server_now is None:
            # No Date header at all: fall back to our clock, one overlap behind.
            server_now = int(self._wall() * 1000) - self.policy.overlap_ms
        return server_now

    def _asked_at(self) -> int:
        """The server's time as a page is asked for: the clock estimate, or without any
        ``Date`` yet our own clock one overlap behind (a lower bound is the safe side)."""
        estimate = self.client.server_now()
        if estimate is None:
            return int(self._wall() * 1000) - self.policy.overlap_ms
        return estimate

    def _read_by(self) -> int | None:
        """Called once a response is in: the latest the server's time can have been when
        its rows were read (:func:`changes_for_page`)."""
        return self.client.server_upper()

    def _fetcher(self, window: cursor.Window, page: int, bounded: bool,
                 bulk: bool = True) -> Callable[[], Awaitable[Page]]:
        after, before = cursor.query_bounds(window, bounded, self.policy)
        dated_after = None
        if self.resource.strategy != "incremental":
            after = before = None
        if self.resource.strategy == "dated":
            since = window.hi - self.resource.lookback_days * 86_400_000
            dated_after = format_ms(since)[:10]

        async def fetch() -> Page:
            return await self.client.page(self.resource, page=page,
                                          per_page=self.policy.per_page,
                                          updated_after=after, updated_before=before,
                                          dated_after=dated_after, bulk=bulk)
        return fetch

    async def poll_once(self) -> int:
        """Read until no window is pending; returns the number of changes published
        (derived events not counted)."""
        store, name = self.store, self.resource.name
        progress = await store.progress(self.practice, name)
        if self.resource.strategy != "incremental":
            # No update filter: every poll lists the whole set (or its recent dates).
            progress = cursor.Progress(cursor=None, synced=progress.synced)
        progress = cursor.start(progress, await self._server_now(), self.policy)
        reader = cursor.WindowRead(progress, self.closed, self.policy)
        self._first_sync = None
        if not progress.synced and self.resource.strategy == "incremental":
            raw = await store.redis.hmget(store.keys.cursor(self.practice, name),
                                          ["backfill_done", "backfill_started_at"])
            done, began = (v.decode() if isinstance(v, bytes) else v for v in raw)
            self._first_sync = [int(done or 0), began or str(self._wall())]
        try:
            return await self._read_windows(reader)
        except BaseExceptionGroup as group:
            # The task group only holds the page fetched ahead, whose errors are re-raised
            # in order; surface the one error as itself, for the caller's except clauses.
            raise sole(group) from None

    def _progress_status(self, whole: bool, page: Page) -> dict[str, str]:
        """Status fields stored with a page: when, and how far a first sync has come (the
        total is the first whole-range window's count, read on its first page)."""
        status = {"last_page_at": str(self._wall())}
        if self._first_sync is not None:
            self._first_sync[0] += len(page.rows)
            status["backfill_done"] = str(self._first_sync[0])
            status["backfill_started_at"] = str(self._first_sync[1])
            if whole and page.total_count is not None:
                status["backfill_total"] = str(page.total_count)
        return status

    async def _commit_page(self, rows: list[dict[str, Any]], *, emit_created: bool,
                           progress: cursor.Progress | None,
                           status: dict[str, str], read_by: int | None) -> list[Event]:
        """Diff ``rows`` (read by server time ``read_by`` at the latest) against their
        snapshots and commit the result with ``progress``.

        If another process stored another dictionary meanwhile, nothing was written: the
        page is diffed again with the stored one."""
        store, name = self.store, self.resource.name
        for attempt in (1, 2):
            codec = await store.codec(self.practice, name)
            olds = await store.snapshots(self.practice, name, [str(r["id"]) for r in rows])
            changes = changes_for_page(self.practice, name, rows, olds, codec,
                                       emit_created=emit_created, now=self._now(),
                                       server_now=read_by,
                                       unreadable=self._unreadable)
            try:
                await store.commit(self.practice, name, progress=progress,
                                   snapshots=changes.snapshots, events=changes.events,
                                   zdict=changes.zdict, status=status)
            except DictionaryConflict:
                if attempt == 2:
                    raise
                continue
            if changes.zdict is not None:
                codec.saved = True
            self._events(changes.events)
            return changes.events
        raise AssertionError("unreachable")

    async def _read_windows(self, reader: cursor.WindowRead,
                            sweep: set[str] | None = None) -> int:
        """Read every pending window of ``reader``, committing each page.

        A ``sweep`` (reconciliation) collects the ids it sees into the set and leaves the
        stored cursor alone; a poll persists its progress with each page. A poll that gives
        up on a window for now (re-read ``max_reads`` times) stops there."""
        store, name = self.store, self.resource.name
        persist = sweep is None
        published = 0
        ahead: _Prefetch | None = None
        later = False
        async with anyio.create_task_group() as tg:
            while reader.progress.windows:
                key = (reader.window, reader.progress.page)
                last = len(reader.progress.windows) == 1
                emit_created = self.initial_sync == "emit" or reader.progress.synced
                try:
                    if ahead is not None and ahead.key == key:
                        asked_at = ahead.asked_at
                        page = await ahead.take()
                    else:
                        # The first page of a synced resource's only window is the steady
                        # poll; everything else (backfill, catch-up, sweeps) is bulk work.
                        steady = (persist and last and key[1] == 1 and reader.progress.synced
                                  and self.resource.strategy == "incremental")
                        asked_at = self._asked_at()
                        page = await self._fetcher(*key, reader.bounded, not steady)()
                    # The page is in (a page fetched ahead too): its rows were read by now.
                    read_by = self._read_by()
                except PageTooDeep:
                    split = reader.too_deep()
                    if split is None:
                        raise
                    log.info("page too deep; window split in %d", len(split[1].windows),
                             extra=self._extra)
                    if persist:
                        await store.commit(self.practice, name, progress=split[1])
                    continue
                finally:
                    ahead = None
                self.pages += 1
                whole = (key[0].lo is None and key[1] == 1
                         and len(reader.progress.windows) == 1)
                outcome, new_progress = reader.page_read(
                    [str(r["id"]) for r in page.rows], page.total_count,
                    [updated_ms(r) for r in page.rows], now=asked_at)
                if outcome is cursor.Outcome.NEXT:
                    ahead = _Prefetch((reader.window, new_progress.page), self._asked_at())
                    tg.start_soon(ahead.run, self._fetcher(*ahead.key, reader.bounded))
                rows = dedupe(page.rows)
                if persist and self.seen is not None:
                    self.seen.update(str(r["id"]) for r in rows)
                if sweep is not None:
                    ids = [str(r["id"]) for r in rows]
                    sweep.update(ids)
                    await store.sweep_saw(self.practice, name, ids)
                    emit_created = True
                events = await self._commit_page(
                    [dict(r) for r in rows], emit_created=emit_created,
                    progress=new_progress if persist else None,
                    status=self._progress_status(whole, page) if persist
                    else {"last_page_at": str(self._wall()), **store.sweep_fields(new_progress)},
                    read_by=read_by)
                published += changes_in(events)
                if self.heartbeat is not None:
                    self.heartbeat()
                if outcome is cursor.Outcome.LATER:
                    later = True
                    break
        await self._note_reads(reader, later, persist)
        return published

    async def _note_reads(self, reader: cursor.WindowRead, later: bool, persist: bool) -> None:
        """Status and metrics of the re-reads this poll or sweep needed."""
        self._stat("rereads", reader.rereads)
        self._stat("incomplete", reader.incomplete)
        fields: dict[str, str] = {}
        if reader.rereads or reader.incomplete:
            fields["reread_note"] = reread_note("poll" if persist else "sweep",
                                                reader.rereads, reader.incomplete, later)
            fields["reread_at"] = str(self._wall())
            log.info("%s", fields["reread_note"], extra=self._extra)
        if persist:
            fields.update(last_poll_at=str(self._wall()), last_error="",
                          window_waiting="1" if later else "")
        if fields:
            await self.store.note(self.practice, self.resource.name, **fields)

    async def confirm(self, ids: list[str]) -> int:
        """Ids a Dentally webhook named that the poll did not show, each fetched on its
        own, by the reconciliation's rule: a 404 publishes ``<type>.deleted`` at once (if
        we hold the record); a record that is there is diffed and committed like any page
        row, so a hint never publishes what a poll already did. Returns events published."""
        store, name = self.store, self.resource.name
        published = 0
        synced = (await store.progress(self.practice, name)).synced
        for rid in ids:
            try:
                record = await self.client.fetch(self.resource, rid)
            except NotFound:
                published += await self._deleted(rid, await store.codec(self.practice, name))
                continue
            events = await self._commit_page(
                [record], emit_created=self.initial_sync == "emit" or synced, progress=None,
                status={}, read_by=self._read_by())
            published += len(events)
        return published

    async def sweep_requested(self) -> bool:
        """Whether ``dentally-notifier reconcile`` asked for a sweep of this resource, or
        one is in progress (a restarted daemon continues it at once)."""
        raw = await self.store.redis.hmget(
            self.store.keys.cursor(self.practice, self.resource.name), ["reconcile_due", "sweep"])
        return any(raw)

    async def reconcile(self) -> tuple[int, int]:
        """A full sweep: every id Dentally lists, against every id we hold.

        An id we hold that the sweep did not see is fetched on its own: a 404 confirms the
        deletion (``<type>.deleted`` with the last known record); a record that is there
        after all (an unstable page skipped it) is diffed like any other. The sweep reads
        with the same windows as a backfill and diffs what it reads, so changes the
        incremental polls missed are published too. If the deletions confirmed exceed
        ``max_delete_fraction`` of the records held, none is published until a person
        accepts them (:mod:`notifier.core.reconcile`). Returns (deleted, other events).

        Its progress survives a restart (:meth:`Store.sweep_state`): a sweep in progress
        continues from the window it was reading with the ids it saw, so that frequent
        restarts cannot keep a large table's sweep from ever finishing.
        """
        store, name = self.store, self.resource.name
        saved = await store.sweep_state(self.practice, name)
        if saved is None:
            progress = cursor.start(cursor.Progress(synced=True), await self._server_now(),
                                    self.policy)
            seen: set[str] = set()
            confirmed: set[str] = set()
            await store.note(self.practice, name,
                             **store.sweep_fields(progress))
        else:
            # Windows left: the current one again from its first page (the clean-read
            # check needs one process's read of it); none: only the ids it missed are left.
            progress, seen, confirmed = saved
            if progress.windows:
                progress = cursor.start(progress, 0, self.policy)
            log.info("continuing a sweep: %d window(s) left, %d ids seen, %d confirmed gone",
                     len(progress.windows), len(seen), len(confirmed), extra=self._extra)
        reader = cursor.WindowRead(progress, self.closed, self.policy, sweep=True)
        try:
            published = await self._read_windows(reader, sweep=seen)
        except BaseExceptionGroup as group:
            raise sole(group) from None
        held = [rid async for rid in store.held_ids(self.practice, name)]
        missing = [rid for rid in held if rid not in seen]
        gone = [rid for rid in missing if rid in confirmed]
        # One request per id: each answer is kept, so that a restart, an error (the loop
        # tries again soon) or the end of this pass's time does not ask again for the ids
        # already settled. A table's worth of them must not hold the polls for minutes.
        until = (None if self.sweep_fetch_seconds is None
                 else anyio.current_time() + self.sweep_fetch_seconds)
        unsettled = [rid for rid in missing if rid not in confirmed]
        for n, rid in enumerate(unsettled):
            if until is not None and n and anyio.current_time() >= until:
                log.info("sweep: %d of %s left to fetch; continuing after the next poll",
                         len(unsettled) - n, plural(len(unsettled), "id"),
                         extra=self._extra)
                return 0, published
            try:
                record = await self.client.fetch(self.resource, rid)
            except NotFound:
                await store.sweep_saw(self.practice, name, [rid], gone=True)
                gone.append(rid)
                continue
            events = await self._commit_page([record], emit_created=True, progress=None,
                                             status={}, read_by=self._read_by())
            await store.sweep_saw(self.practice, name, [rid])
            published += changes_in(events)
        counts = rules.Deletions(tracked=len(held), missing=len(missing), confirmed=len(gone))
        deleted = 0
        if rules.allowed(counts, self.max_delete_fraction, await self._accepted()):
            codec = await store.codec(self.practice, name)
            for rid in gone:
                deleted += await self._deleted(rid, codec)
            await store.redis.hdel(store.keys.cursor(self.practice, name),
                                   "reconcile_held", "reconcile_accept")
        else:
            await self._hold(counts)
        await store.note(self.practice, name, last_reconcile_at=str(self._wall()),
                         reconcile_due="")
        await store.sweep_done(self.practice, name)
        if deleted or missing:
            log.info("reconciliation: %s deleted, %s found", deleted,
                     plural(len(missing) - len(gone), "skipped row", "skipped rows"),
                     extra=self._extra)
        return deleted, published

    async def _accepted(self) -> int | None:
        raw = await self.store.redis.hget(
            self.store.keys.cursor(self.practice, self.resource.name), "reconcile_accept")
        try:
            return int(raw) if raw else None
        except ValueError:
            return None

    async def _hold(self, counts: rules.Deletions) -> None:
        """Publish none of a suspicious sweep's deletions; say so once."""
        action = ("check that the key reads the right practice and that Dentally lists "
                  "every record; if the deletions are real, confirm them with `"
                  + ACCEPT_HINT.format(practice=self.practice, resource=self.resource.name)
                  + "`")
        data = counts.data(self.resource.name, self.max_delete_fraction, action)
        await self.store.note(self.practice, self.resource.name,
                              reconcile_held=json.dumps(data | {"at": self._wall()}))
        event = notifier_event(rules.SUSPICIOUS, self.practice, data,
                               datetime.fromtimestamp(self._wall(), UTC), self.resource.name,
                               str(counts.tracked), str(counts.confirmed))
        if await self.store.publish(event):
            self._stat("suspicious")
        log.error("reconciliation would delete %d of %d %s (more than %.0f%%): none "
                  "published; %s", counts.confirmed, counts.tracked, self.resource.name,
                  100 * self.max_delete_fraction, action, extra=self._extra)

    async def _deleted(self, rid: str, codec: Codec) -> int:
        (blob,) = await self.store.snapshots(self.practice, self.resource.name, [rid])
        if blob is None:
            return 0
        try:
            last = codec.decode(blob)
        except ValueError as exc:  # a corrupt snapshot still deserves its deletion event
            self._unreadable(rid, exc)
            last = {"id": rid}
        event = record_event(self.practice, self.resource.name, "deleted", last, self._now())
        await self.store.commit(self.practice, self.resource.name, progress=None,
                                deletes=[rid], events=[event])
        self._events([event])
        return 1


def reread_note(what: str, rereads: int, incomplete: int, later: bool) -> str:
    """The status line for a poll or sweep that had to re-read windows."""
    if not incomplete:
        return f"{what} re-read windows {plural(rereads, 'time')}; all read completely"
    return (f"{what} re-read windows {plural(rereads, 'time')}; "
            f"{plural(incomplete, 'window')} still incomplete, "
            + ("retried next poll" if later else "missing ids fetched one by one"))


def sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single error inside (nested) groups, or the group itself if there are several."""
    while len(group.exceptions) == 1 and isinstance(group.exceptions[0], BaseExceptionGroup):
        group = group.exceptions[0]
    return group.exceptions[0] if len(group.exceptions) == 1 else group
