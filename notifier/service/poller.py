"""Polls one resource of one practice: windows from the cursor rules, pages from the client,
changes from the diff, and one atomic commit per page.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from notifier.core import cursor
from notifier.core.diff import diff
from notifier.core.resources import Resource
from notifier.dentally.client import DentallyClient
from notifier.errors import PageTooDeep
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
        events.append(record_event(practice, resource, change.kind, row, now,
                                   change.changes, canon))
    return PageChanges(events, snaps, zdict)


class ResourcePoller:
    """Reads every change of one resource since its cursor and commits it page by page."""

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

    @property
    def closed(self) -> bool:
        return self.resource.closed_windows and self.resource.strategy == "incremental"

    async def poll_once(self) -> int:
        """Read until no window is pending; returns the number of events published."""
        store, name = self.store, self.resource.name
        progress = await store.progress(self.practice, name)
        server_now = self.client.server_now()
        if server_now is None:
            await self.client.user()
            server_now = self.client.server_now()
            if server_now is None:
                # No Date header at all: fall back to our clock, one overlap behind.
                server_now = int(self._wall() * 1000) - self.policy.overlap_ms
        if self.resource.strategy == "full":
            progress = cursor.Progress(cursor=None, synced=progress.synced)
        progress = cursor.start(progress, server_now, self.policy)
        reader = cursor.WindowRead(progress, self.closed, self.policy)
        codec = await store.codec(self.practice, name)
        published = 0
        while reader.progress.windows:
            window = reader.window
            after, before = cursor.query_bounds(window, self.closed, self.policy)
            if self.resource.strategy == "full":
                after = before = None
            emit_created = self.initial_sync == "emit" or reader.progress.synced
            try:
                page = await self.client.page(self.resource, page=reader.progress.page,
                                              per_page=self.policy.per_page,
                                              updated_after=after, updated_before=before)
            except PageTooDeep:
                split = reader.too_deep()
                if split is None:
                    raise
                log.info("page too deep; window split in %d", len(split[1].windows),
                         extra={"practice": self.practice, "resource": name})
                await store.commit(self.practice, name, progress=split[1])
                continue
            self.pages += 1
            ids = [str(r["id"]) for r in page.rows]
            _, new_progress = reader.page_read(ids, page.total_count)
            rows = dedupe(page.rows)
            olds = await store.snapshots(self.practice, name, [str(r["id"]) for r in rows])
            changes = changes_for_page(self.practice, name, rows, olds, codec,
                                       emit_created=emit_created, now=self._now())
            await store.commit(self.practice, name, progress=new_progress,
                               snapshots=changes.snapshots, events=changes.events,
                               zdict=changes.zdict,
                               status={"last_page_at": str(self._wall())})
            published += len(changes.events)
        await store.note(self.practice, name, last_poll_at=str(self._wall()), last_error="")
        return published
