"""The sandbox's data, keys, clock, rate windows and quirks, without any HTTP.

Kept apart from the web layer so that its rules (which rows a filter matches, how a page is
cut, how the fixed-hour rate window counts) read as plain code.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sortedcontainers import SortedList

from notifier.sandbox.api import ENDPOINTS
from notifier.sandbox.fake import Faker
from notifier.sandbox.hooks import Webhooks
from notifier.sandbox.ledger import Ledger
from notifier.sandbox.limits import Limiter, Verdict

DAY_MS = 86_400_000
# Resources the sandbox serves, and whether their ids are integers (else GUID strings).
INT_IDS = {e.name: e.int_ids for e in ENDPOINTS.values()}


class Clock:
    """The sandbox's own clock: real time plus an offset, or frozen at an instant."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.offset_ms = 0
        self.frozen_ms: int | None = None

    def now_ms(self) -> int:
        if self.frozen_ms is not None:
            return self.frozen_ms
        return int(self._wall() * 1000) + self.offset_ms


@dataclass
class Quirks:
    """Switchable misbehaviour of the real API. All off by default."""

    deep_page_limit: int | None = None
    """Answer 413 when ``(page - 1) * per_page`` reaches this many rows."""
    unstable_rate: float = 0.0
    """Per row at a page boundary, chance to swap it with the next page's row (one repeated,
    one skipped), as a non-deterministic ORDER BY does."""
    error_rate: float = 0.0
    """Chance of a 503 on any API request."""
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer the next API requests with, in order."""
    latency: float = 0.0
    """Seconds to wait before answering each API request."""
    order: str = "id"
    """Default list order: ``id`` or ``updated_at``."""
    rate_limit: int = 3600
    rate_window: float = 3600.0
    """Length of the fixed rate window in seconds (aligned on the sandbox clock)."""
    rate_limit_status: int = 403
    """What an exhausted budget answers: 403 (observed) or 429 with Retry-After."""
    rate_window_start: str = "clock"
    """``clock``: windows aligned on the sandbox clock; ``first_request``: a window starts
    at the user's first request after the last one ended (see :mod:`.limits`)."""
    burst_limit: int = 0
    """Per key, at most this many requests in any second, else 429 (0: off)."""
    key_idle_expiry: float = 14 * 86400.0
    date_skew_ms: int = 0
    """Added to every ``Date`` header (only the header: record stamps keep the clock)."""
    date_offsets: list[int] = field(default_factory=list)
    """One-shot ``Date`` offsets: the next responses' headers, one each, in order, are moved
    by these many ms (one load-balancer node with a bad clock)."""
    between_pages: list[dict[str, Any]] = field(default_factory=list)
    """One-shot writes made right after a list page is served, before the next request:
    ``{"resource": "appointments", "after_page": 1, "delete": 1, "create": 1}`` deletes the
    first ``delete`` rows of that page (rows the client has just read) and creates
    ``create`` new records. Each entry fires once."""
    write_skew_ms: int = 0
    """Added to the stamps of records written from now on (an app server whose clock is
    fast: its rows carry an ``updated_at`` in the server's future)."""
    seed: int = 7

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise KeyError(key)
            setattr(self, key, value)


@dataclass
class Key:
    token: str
    user_id: int
    scopes: set[str]
    revoked: bool = False
    last_used_ms: int | None = None

    def allows(self, resource: str) -> bool:
        return "*" in self.scopes or f"{resource}:read" in self.scopes


def _sort_id(record_id: str, int_ids: bool) -> Any:
    return int(record_id) if int_ids else record_id


class Table:
    """One resource's rows, indexed by ``updated_at`` for fast incremental queries."""

    def __init__(self, name: str, ledger: Ledger | None = None) -> None:
        self.name = name
        self.ledger = ledger
        self.int_ids = INT_IDS[name]
        self.rows: dict[str, dict[str, Any]] = {}
        self.updated: dict[str, int] = {}
        self.index: SortedList = SortedList()   # (updated_ms, sort_id, id)
        self.version = 0
        self._cache: dict[tuple[Any, ...], list[str]] = {}

    def put(self, record_id: str, row: dict[str, Any], updated_ms: int) -> None:
        old = self.updated.get(record_id)
        sid = _sort_id(record_id, self.int_ids)
        if old is not None:
            self.index.remove((old, sid, record_id))
        self.rows[record_id] = row
        self.updated[record_id] = updated_ms
        self.index.add((updated_ms, sid, record_id))
        self.version += 1
        self._cache.clear()
        if self.ledger is not None:
            self.ledger.write(self.name, record_id, row, updated_ms)

    def delete(self, record_id: str) -> bool:
        if record_id not in self.rows:
            return False
        sid = _sort_id(record_id, self.int_ids)
        self.index.remove((self.updated.pop(record_id), sid, record_id))
        del self.rows[record_id]
        self.version += 1
        self._cache.clear()
        if self.ledger is not None:
            self.ledger.write(self.name, record_id, None, None)
        return True

    def query(self, after: int | None, before: int | None, order: str, descending: bool,
              keep: Callable[[dict[str, Any]], bool] | None = None,
              variant: str | None = None) -> list[str]:
        """Ids matching ``after < updated_at < before`` in list order (cached until a write;
        ``variant`` names what ``keep`` filters on, for the cache)."""
        key = (after, before, order, descending, keep is None, variant)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        lo = 0 if after is None else self.index.bisect_left((after + 1,))
        hi = len(self.index) if before is None else self.index.bisect_left((before,))
        entries = self.index[lo:hi]
        if order == "id":
            entries.sort(key=lambda e: e[1])
        ids = [e[2] for e in entries]
        if keep is not None:
            ids = [i for i in ids if keep(self.rows[i])]
        if descending:
            ids.reverse()
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = ids
        return ids


class Sandbox:
    """Everything the sandbox knows. Not thread-safe: one event loop owns it."""

    def __init__(self, tz: str = "Europe/London", seed: int = 7,
                 wall: Callable[[], float] = time.time) -> None:
        self.tz = ZoneInfo(tz)
        self.clock = Clock(wall)
        self.quirks = Quirks(seed=seed)
        self.faker = Faker(seed)
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.tables = {name: Table(name, self.ledger) for name in INT_IDS}
        self.next_id = {name: 1000 for name in INT_IDS}
        self.keys: dict[str, Key] = {}
        self.limiter = Limiter()
        self.requests: dict[str, int] = {}              # token -> API requests made
        self.rejected: dict[str, int] = {}              # token -> requests refused with 401
        self.requests_total = 0
        self.webhooks = Webhooks(seed)
        """Dentally-style webhooks sent on every write (off until a URL is set)."""

    # -- time -------------------------------------------------------------------------
    def stamp(self, ms: int) -> str:
        """``ms`` as Dentally writes it: milliseconds and the practice's local offset."""
        dt = datetime.fromtimestamp(ms // 1000, tz=self.tz) + timedelta(milliseconds=ms % 1000)
        return dt.isoformat(timespec="milliseconds")

    def write_ms(self) -> int:
        """The stamp a write made now gets (the clock, plus any ``write_skew_ms``)."""
        return self.clock.now_ms() + self.quirks.write_skew_ms

    # -- records ----------------------------------------------------------------------
    def new_id(self, resource: str) -> str:
        if INT_IDS[resource]:
            self.next_id[resource] += 1
            return str(self.next_id[resource])
        return self.faker.guid()

    def create(self, resource: str, fields: dict[str, Any] | None = None,
               at_ms: int | None = None) -> dict[str, Any]:
        table = self.tables[resource]
        now = self.write_ms() if at_ms is None else at_ms
        record_id = str(fields["id"]) if fields and "id" in fields else self.new_id(resource)
        body = self._generate(resource, now)
        body.update({k: v for k, v in (fields or {}).items() if k != "id"})
        row = {"id": int(record_id) if table.int_ids else record_id, **body,
               "created_at": self.stamp(now), "updated_at": self.stamp(now)}
        table.put(record_id, row, now)
        self.webhooks.wrote(resource, "created", row)
        return row

    def _generate(self, resource: str, now: int) -> dict[str, Any]:
        f = self.faker
        if resource == "patients":
            return f.patient()
        if resource == "appointments":
            a = f.appointment(now + self.rng.randint(-30, 60) * DAY_MS)
            start = a.pop("_start_ms")
            a["start_time"] = self.stamp(start)
            a["finish_time"] = self.stamp(start + a["duration"] * 60_000)
            for state in ("pending", "confirmed", "arrived", "in_surgery", "completed",
                          "did_not_attend"):
                a[f"{state}_at"] = None
            return a
        if resource == "invoices":
            return f.invoice()
        if resource == "payments":
            return {**f.payment(), "dated_on": self.stamp(now)[:10]}  # taken when recorded
        if resource == "sites":
            return f.site()
        return f.other(resource)

    def update(self, resource: str, record_id: str, fields: dict[str, Any] | None = None,
               at_ms: int | None = None) -> dict[str, Any] | None:
        table = self.tables[resource]
        row = table.rows.get(record_id)
        if row is None:
            return None
        now = self.write_ms() if at_ms is None else at_ms
        changes = fields if fields is not None else self._real_change(resource, row)
        new = {**row, **{k: v for k, v in changes.items() if k not in ("id", "created_at")}}
        if resource == "appointments" and "state" in changes:
            state = str(new["state"]).lower().replace(" ", "_")
            if f"{state}_at" in new:
                new[f"{state}_at"] = self.stamp(now)
            if new["state"] == "Cancelled":
                new["cancelled_at"] = self.stamp(now)
        new["updated_at"] = self.stamp(now)
        table.put(record_id, new, now)
        self.webhooks.wrote(resource, "updated", new)
        return new

    def _real_change(self, resource: str, row: dict[str, Any]) -> dict[str, Any]:
        """A random edit that changes at least one field (a same-value edit is a touch)."""
        for _ in range(20):
            changes = self.faker.mutate(resource, row)
            if any(row.get(k) != v for k, v in changes.items()):
                return changes
        return {"metadata": {**(row.get("metadata") or {}), "rev": self.rng.random()}}

    def delete(self, resource: str, record_id: str) -> bool:
        row = self.tables[resource].rows.get(record_id)
        gone = self.tables[resource].delete(record_id)
        if gone and row is not None:
            self.webhooks.wrote(resource, "deleted", row)
        return gone

    def seed(self, resource: str, count: int, spread_days: float = 0.0) -> list[str]:
        """Create ``count`` rows with ``updated_at`` spread over the past ``spread_days``."""
        now = self.clock.now_ms()
        span = int(spread_days * DAY_MS)
        ids = []
        for _ in range(count):
            at = now - self.rng.randint(0, span) if span else now
            ids.append(str(self.create(resource, at_ms=at)["id"]))
        return ids

    # -- keys and budget --------------------------------------------------------------
    def add_key(self, token: str, scopes: list[str] | None = None, user_id: int = 1) -> Key:
        key = Key(token, user_id, {"*"} if scopes is None else set(scopes),
                  last_used_ms=self.clock.now_ms())
        self.keys[token] = key
        return key

    def admit(self, token: str, user_id: int) -> Verdict:
        """Both rate limits for one request now (see :mod:`notifier.sandbox.limits`)."""
        q = self.quirks
        return self.limiter.admit(token, user_id, self.clock.now_ms(), limit=q.rate_limit,
                                  window_s=q.rate_window, start_mode=q.rate_window_start,
                                  hourly_status=q.rate_limit_status,
                                  burst_limit=q.burst_limit)
