"""Polls one resource of one practice: windows from the cursor rules, pages from the client,
changes from the diff, and one atomic commit per page.
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
from notifier.core.diff import diff
from notifier.core.resources import Resource
from notifier.core.timefmt import format_ms, format_us
from notifier.dentally.client import DentallyClient, Page
from notifier.errors import NotFound, PageTooDeep
from notifier.events import Event, canonical, record_event
from notifier.store.codec import Codec, learn
from notifier.store.redis import Store

log = logging.getLogger("notifier.poller")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PageChanges:
    events: list[Event]
    snapshots: dict[str, bytes]
    zdict: bytes | None


def dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per id (an unstable page can serve one twice), the later ``updated_at`` kept."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        rid = str(row["id"])
        other = by_id.get(rid)
        if other is None or str(row.get("updated_at", "")) >= str(other.get("updated_at", "")):
            by_id[rid] = row
    return list(by_id.values())


def changes_for_page(practice: str, resource: str, rows: list[dict[str, Any]],
                     olds: list[bytes | None], codec: Codec, *, emit_created: bool,
                     now: datetime) -> PageChanges:
    """Diff a page against its snapshots: the events to publish and snapshots to write."""
    canons = [canonical(r) for r in rows]
    zdict = None
    if codec.zdict is None:
        zdict = learn(canons)
        if zdict is not None:
            codec.adopt(zdict)
    events: list[Event] = []
    snaps: dict[str, bytes] = {}
    stamp = format_us(now)
    for row, canon, old_blob in zip(rows, canons, olds, strict=True):
        rid = str(row["id"])
        old = None
        if old_blob is not None:
            try:
                old_bytes = codec.decode_bytes(old_blob)
            except Exception as exc:  # zlib.error or ValueError: a corrupt blob
                log.warning("snapshot of %s %s unreadable (%s); treating it as new",
                            resource, rid, exc, extra={"practice": practice})
                old_bytes = None
            if old_bytes == canon:
                continue
            if old_bytes is not None:
                old = json.loads(old_bytes)
        change, store_it = diff(old, row)
        if store_it:
            snaps[rid] = codec.encode(canon)
        if change is None or (change.kind == "created" and not emit_created):
            continue
        events.append(record_event(practice, resource, change.kind, row, stamp,
                                   change.changes, canon))
    return PageChanges(events, snaps, zdict)


class _Prefetch:
    """One page requested ahead, while the previous one is diffed and committed.

    Its failure is kept and raised when the page is taken, never in the task group.
    """

    def __init__(self, key: tuple[cursor.Window, int]) -> None:
        self.key = key
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
                 now: Callable[[], datetime] = _utcnow,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.client = client
        self.practice = practice
        self.resource = resource
        self.policy = policy
        self.initial_sync = initial_sync
        self._now = now
        self._wall = wall
        self.pages = 0
        self.heartbeat: Callable[[], None] | None = None
        """Called after every committed page: a long backfill is progress."""
        self.on_events: Callable[[list[Event]], object] | None = None
        """Called with the events of every committed page (metrics)."""
        self._first_sync: list[Any] | None = None

    @property
    def closed(self) -> bool:
        return self.resource.closed_windows and self.resource.strategy == "incremental"

    async def _server_now(self) -> int:
        server_now = self.client.server_now()
        if server_now is None:
            await self.client.user()
            server_now = self.client.server_now()
        if server_now is None:
            # No Date header at all: fall back to our clock, one overlap behind.
            server_now = int(self._wall() * 1000) - self.policy.overlap_ms
        return server_now

    def _fetcher(self, window: cursor.Window, page: int, last: bool,
                 bulk: bool = True) -> Callable[[], Awaitable[Page]]:
        after, before = cursor.query_bounds(window, self.closed, self.policy, last)
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
        """Read until no window is pending; returns the number of events published."""
        store, name = self.store, self.resource.name
        progress = await store.progress(self.practice, name)
        if self.resource.strategy != "incremental":
            # No update filter: every poll lists the whole set (or its recent dates).
            progress = cursor.Progress(cursor=None, synced=progress.synced)
        progress = cursor.start(progress, await self._server_now(), self.policy)
        reader = cursor.WindowRead(progress, self.closed, self.policy)
        codec = await store.codec(self.practice, name)
        self._first_sync = None
        if not progress.synced and self.resource.strategy == "incremental":
            raw = await store.redis.hmget(store.keys.cursor(self.practice, name),
                                          ["backfill_done", "backfill_started_at"])
            done, began = (v.decode() if isinstance(v, bytes) else v for v in raw)
            self._first_sync = [int(done or 0), began or str(self._wall())]
        try:
            return await self._read_windows(reader, codec)
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

    async def _read_windows(self, reader: cursor.WindowRead, codec: Codec,
                            sweep: set[str] | None = None) -> int:
        """Read every pending window of ``reader``, committing each page.

        A ``sweep`` (reconciliation) collects the ids it sees into the set and leaves the
        stored cursor alone; a poll persists its progress with each page.
        """
        store, name = self.store, self.resource.name
        persist = sweep is None
        published = 0
        ahead: _Prefetch | None = None
        async with anyio.create_task_group() as tg:
            while reader.progress.windows:
                key = (reader.window, reader.progress.page)
                last = len(reader.progress.windows) == 1
                emit_created = self.initial_sync == "emit" or reader.progress.synced
                try:
                    if ahead is not None and ahead.key == key:
                        page = await ahead.take()
                    else:
                        # The first page of a synced resource's only window is the steady
                        # poll; everything else (backfill, catch-up, sweeps) is bulk work.
                        steady = (persist and last and key[1] == 1 and reader.progress.synced
                                  and self.resource.strategy == "incremental")
                        page = await self._fetcher(*key, last, not steady)()
                except PageTooDeep:
                    split = reader.too_deep()
                    if split is None:
                        raise
                    log.info("page too deep; window split in %d", len(split[1].windows),
                             extra={"practice": self.practice, "resource": name})
                    if persist:
                        await store.commit(self.practice, name, progress=split[1])
                    continue
                finally:
                    ahead = None
                self.pages += 1
                whole = (key[0].lo is None and key[1] == 1
                         and len(reader.progress.windows) == 1)
                outcome, new_progress = reader.page_read([str(r["id"]) for r in page.rows],
                                                         page.total_count)
                if outcome is cursor.Outcome.NEXT:
                    ahead = _Prefetch((reader.window, new_progress.page))
                    tg.start_soon(ahead.run, self._fetcher(*ahead.key, last))
                rows = dedupe(page.rows)
                if sweep is not None:
                    sweep.update(str(r["id"]) for r in rows)
                    emit_created = True
                olds = await store.snapshots(self.practice, name, [str(r["id"]) for r in rows])
                changes = changes_for_page(self.practice, name, rows, olds, codec,
                                           emit_created=emit_created, now=self._now())
                await store.commit(self.practice, name,
                                   progress=new_progress if persist else None,
                                   snapshots=changes.snapshots, events=changes.events,
                                   zdict=changes.zdict,
                                   status=self._progress_status(whole, page) if persist
                                   else {"last_page_at": str(self._wall())})
                published += len(changes.events)
                if self.on_events is not None and changes.events:
                    self.on_events(changes.events)
                if self.heartbeat is not None:
                    self.heartbeat()
        if persist:
            await store.note(self.practice, name, last_poll_at=str(self._wall()),
                             last_error="")
        return published

    async def reconcile(self) -> tuple[int, int]:
        """A full sweep: every id Dentally lists, against every id we hold.

        An id we hold that the sweep did not see is fetched on its own: a 404 confirms the
        deletion (``<type>.deleted`` with the last known record); a record that is there
        after all (an unstable page skipped it) is diffed like any other. The sweep reads
        with the same clean-read windows as a backfill and diffs what it reads, so changes
        the incremental polls missed are published too. Returns (deleted, other events).
        """
        store, name = self.store, self.resource.name
        codec = await store.codec(self.practice, name)
        progress = cursor.start(cursor.Progress(synced=True), await self._server_now(),
                                self.policy)
        seen: set[str] = set()
        reader = cursor.WindowRead(progress, self.closed, self.policy)
        try:
            published = await self._read_windows(reader, codec, sweep=seen)
        except BaseExceptionGroup as group:
            raise sole(group) from None
        deleted = 0
        missing = [rid async for rid in store.held_ids(self.practice, name) if rid not in seen]
        for rid in missing:
            try:
                record = await self.client.fetch(self.resource, rid)
            except NotFound:
                deleted += await self._deleted(rid, codec)
                continue
            (old,) = await store.snapshots(self.practice, name, [rid])
            changes = changes_for_page(self.practice, name, [record], [old], codec,
                                       emit_created=True, now=self._now())
            await store.commit(self.practice, name, progress=None,
                               snapshots=changes.snapshots, events=changes.events)
            published += len(changes.events)
        await store.note(self.practice, name, last_reconcile_at=str(self._wall()))
        if deleted or missing:
            log.info("reconciliation: %d deleted, %d skipped rows found", deleted,
                     len(missing) - deleted,
                     extra={"practice": self.practice, "resource": name})
        return deleted, published

    async def _deleted(self, rid: str, codec: Codec) -> int:
        (blob,) = await self.store.snapshots(self.practice, self.resource.name, [rid])
        if blob is None:
            return 0
        try:
            last = codec.decode(blob)
        except Exception:  # a corrupt snapshot still deserves its deletion event
            last = {"id": rid}
        event = record_event(self.practice, self.resource.name, "deleted", last, self._now())
        await self.store.commit(self.practice, self.resource.name, progress=None,
                                deletes=[rid], events=[event])
        if self.on_events is not None:
            self.on_events([event])
        return 1


def sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single error inside (nested) groups, or the group itself if there are several."""
    while len(group.exceptions) == 1 and isinstance(group.exceptions[0], BaseExceptionGroup):
        group = group.exceptions[0]
    return group.exceptions[0] if len(group.exceptions) == 1 else group
