"""Where a poll starts, which windows it reads, and when the cursor may move.

The cursor is a time on the *server's* clock (ms since the epoch): every change whose
``updated_at`` lies below it has been published. Our own clock never enters: the poller
estimates the server's "now" from its ``Date`` header (see :mod:`notifier.core.clock`).

A poll covers ``[cursor - overlap, server_now)``. The overlap re-reads the recent past so
that rows whose ``updated_at`` was stamped before they became visible (a slow transaction,
app servers with skewed clocks) are not missed; re-reads publish nothing because every row
is diffed against its snapshot. The span is read as *windows* in ascending order, each
sent as ``updated_after=lo - margin`` and, where the resource allows it,
``updated_before=hi``. Whether Dentally's bounds are inclusive, and whether it compares
at second precision, is unknown; the margin on the lower bound alone covers both, since a
row a truncated ``updated_before`` leaves out at the top of one window is inside the margin
of the next.

Dentally only has offset pagination, and it is not stable: a row that changes while we
page moves or leaves the result and shifts every later row by one, so one row is skipped,
and pages repeat and skip rows on their own (ties in the sort order). A window therefore
counts as read only when it was read *completely*:

- it fitted in one page (one response is one consistent query), or
- ``total_count`` stayed the same on every page and the distinct ids seen equal it, and,
  for an *open* window (no ``updated_before``: appointments), no row *entered* it while we
  paged (below), or
- ``total_count`` stayed the same on every page of several reads of the window and the
  *union* of the ids they saw equals it. A closed window's rows can only leave it (a row
  written now gets ``updated_at >= hi``), so a steady count means a steady set, and the
  union of reads that each skipped a few rows covers it; open reads join a union only
  while none of them saw a row enter (:meth:`WindowRead._merge`). This is what ends a
  window that cannot be split (every row shares one ``updated_at``: a bulk import).

A poll's top window (the last pending) is first read open, so that rows changed since
"now" come along at once, and so are windows of resources that ignore ``updated_before``.
An open window can gain rows while we page, and a new row can hide a departure from the
counts: a row already read is deleted (the rows after it slide back, one of them onto the
page just read: never seen) and another is created (the count is back, and the distinct ids,
the deleted one included, equal it). Every row that enters after page 1 was served carries
``updated_at`` at or after the server's time when page 1 was asked for, so a row seen
after page 1, stamped that late and not already known to be in the window (seen by an
earlier read or page of it; rows leave an open window only by deletion), makes the read
unconfirmed: the window is read again (closed, where the resource allows it: a top window
that ended incomplete for any reason is read again closed). In one page nothing can
slide.

A window that was not read completely is read again from page 1. A closed window that
stays incomplete, or that holds more rows than ``window_rows`` (deep pages fail with 413),
is split into smaller windows, unless its rows all share a time too narrow to cut. Re-reads
are bounded by ``max_reads`` per window and poll: a poll that reaches the bound stops
(:attr:`Outcome.LATER`: the window stays pending, the next poll takes it up), and a
reconciliation sweep accepts the union it has (it fetches the ids it did not see on their
own). The cursor moves to a window's ``hi`` only when it was read completely, never past
the server's time as estimated when its last page was asked for, and the caller commits
that move in the same atomic step as the events of its last page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

# 2000-01-01T00:00:00Z: the lower edge used when splitting a window that starts at the
# beginning of time. Rows older than this still belong to the first window.
FLOOR_MS = 946_684_800_000


@dataclass(frozen=True)
class Policy:
    """Tunables of the cursor rules; all durations in milliseconds."""

    overlap_ms: int = 60_000
    margin_ms: int = 1_000
    per_page: int = 100
    window_rows: int = 2_000
    max_tries: int = 3
    """Incomplete reads of a closed window before it is split."""
    max_split: int = 64
    max_reads: int = 8
    """Reads of one window in one poll before the poll gives up on it until the next."""


@dataclass(frozen=True)
class Window:
    """Rows with ``lo <= updated_at < hi`` (``lo`` None: from the beginning)."""

    lo: int | None
    hi: int


@dataclass(frozen=True)
class Progress:
    """What is persisted per practice and resource, in the same step as the events."""

    cursor: int | None = None
    windows: tuple[Window, ...] = ()
    page: int = 1
    tries: int = 0
    count0: int | None = None
    synced: bool = False
    """True once the first full sync finished (``seed`` mode publishes no ``created`` before)."""


class Outcome(Enum):
    NEXT = "next"      # fetch ``progress.page`` of the same window
    DONE = "done"      # window read completely; cursor moved; maybe more windows pending
    RETRY = "retry"    # window incomplete: read it again from page 1
    SPLIT = "split"    # window replaced by smaller ones
    LATER = "later"    # re-read ``max_reads`` times: stop this poll, the window stays pending


def start(progress: Progress, server_now: int, policy: Policy) -> Progress:
    """Plan a poll: resume pending windows, else one window up to the server's now.

    A window interrupted by a crash restarts at page 1, because the clean-read check
    needs every id of the window seen by one process.
    """
    if progress.windows:
        return replace(progress, page=1, count0=None)
    lo = None if progress.cursor is None else progress.cursor - policy.overlap_ms
    if lo is not None and server_now <= lo:
        # The server's clock went back past our overlap: nothing new can be below it.
        return progress
    return replace(progress, windows=(Window(lo, server_now),), page=1, tries=0, count0=None)


def query_bounds(window: Window, closed: bool, policy: Policy) -> tuple[int | None, int | None]:
    """The ``updated_after`` and ``updated_before`` values (ms) to send for ``window``
    (``closed``: with an upper bound; :attr:`WindowRead.bounded` says when)."""
    after = None if window.lo is None else window.lo - policy.margin_ms
    # Exclusive at hi: a row written after the window was planned has updated_at >= hi
    # (hi is a lower bound of the server's time then), so it cannot enter the window, and
    # an entry could hide a departure from the count check. Rows at hi belong to the next
    # window, whose lower margin covers a bound Dentally might treat as inclusive.
    before = window.hi if closed else None
    return after, before


def split(window: Window, parts: int, min_width: int = 2) -> tuple[Window, ...]:
    """``window`` cut into up to ``parts`` equal spans of time, none narrower than
    ``min_width`` ms (a span narrower than the margin would query the same rows again)."""
    lo = FLOOR_MS if window.lo is None else window.lo
    parts = min(parts, (window.hi - lo) // max(1, min_width))
    if parts < 2:
        return (window,)
    edges = [lo + (window.hi - lo) * i // parts for i in range(parts + 1)]
    spans = [Window(edges[i], edges[i + 1]) for i in range(parts)]
    if window.lo is None:
        spans[0] = Window(None, spans[0].hi)
    return tuple(spans)


@dataclass
class WindowRead:
    """Reads the current window of a :class:`Progress`, one page at a time.

    Holds what was seen of this window (in memory only: a restarted process starts the
    window again). ``page_read`` returns the progress to persist with that page's events.
    ``sweep``: a reconciliation sweep, which accepts the union of its reads when the
    re-reads run out (it fetches on their own the ids it holds and did not see).
    """

    progress: Progress
    closed: bool
    policy: Policy
    sweep: bool = False
    seen: set[str] = field(default_factory=set)
    """Ids seen by the current read of the window."""
    union: set[str] = field(default_factory=set)
    """Ids seen by earlier reads of the window with the same steady ``total_count``."""
    union_total: int | None = None
    known: set[str] = field(default_factory=set)
    """Open windows: ids seen in the window by earlier reads (they cannot leave but by
    deletion, so they never count as entries)."""
    reads: int = 0
    """Reads of the current window that ended incomplete, in this poll."""
    rereads: int = 0
    """Re-reads of any window in this poll (for status and metrics)."""
    incomplete: int = 0
    """Windows given up on (``LATER``) or, in a sweep, accepted from an incomplete union."""
    union_bounded: bool = False
    """Whether the reads in ``union`` were closed ones."""
    _t1: int | None = None
    _entered: bool = False
    _union_t0: int | None = None
    _tainted: bool = False
    _span: tuple[int, int] | None = None
    _top_closed: bool = False
    _read_bounded: bool = False

    @property
    def window(self) -> Window:
        return self.progress.windows[0]

    @property
    def bounded(self) -> bool:
        """Whether the current read sends ``updated_before``. Not on resources that ignore
        it; and not on a poll's top window (the last one pending), so that rows changed
        since "now" come along at once, until one read of it saw rows enter while it
        paged or ended incomplete for any reason: then it is read again closed (the cursor
        only ever moves to ``hi``)."""
        if not self.closed:
            return False
        return len(self.progress.windows) > 1 or self._top_closed

    def page_read(self, ids: list[str], total_count: int | None,
                  stamps: list[int | None] | None = None,
                  now: int | None = None) -> tuple[Outcome, Progress]:
        """One page read: its ids, the ``total_count`` it reported, its rows' ``updated_at``
        (ms, None where unknown) and the server's time (estimate) when it was asked for."""
        p = self.progress
        page = p.page
        if page == 1:
            self.seen.clear()
            self._t1, self._entered, self._tainted = now, False, False
            self._read_bounded = self.bounded
        count0 = total_count if page == 1 else p.count0
        duplicate = any(i in self.seen for i in ids)
        if stamps:
            known = [s for s in stamps if s is not None]
            if known:
                lo, hi = self._span or (known[0], known[0])
                self._span = (min(lo, *known), max(hi, *known))
            if not self._read_bounded:
                self._entries(ids, stamps, page)
        self.seen.update(ids)
        short = len(ids) < self.policy.per_page

        if page == 1 and short:
            return self._done(now)
        if page == 1 and total_count is not None and total_count > self.policy.window_rows:
            parts = min(math.ceil(2 * total_count / self.policy.window_rows),
                        self.policy.max_split)
            result = self._split(parts)
            if result is not None:
                return result
        if total_count != count0 or (total_count is None and duplicate):
            return self._dirty(now, steady=False)
        if not short:
            return self._set(Outcome.NEXT, replace(p, page=page + 1, count0=count0))
        if total_count is None:
            return self._done(now)
        if len(self.seen) == total_count and not self._entered:
            return self._done(now)
        return self._dirty(now, steady=True)

    def _entries(self, ids: list[str], stamps: list[int | None], page: int) -> None:
        """Open reads: note rows stamped since this read's (or the union's) first page was
        asked for that were not known to be in the window (before this page)."""
        for rid, stamp in zip(ids, stamps, strict=False):
            if stamp is None or rid in self.seen or rid in self.known:
                continue
            if page > 1 and self._t1 is not None and stamp >= self._t1:
                self._entered = True
            if self._union_t0 is not None and stamp >= self._union_t0:
                self._tainted = True

    def too_deep(self) -> tuple[Outcome, Progress] | None:
        """The server refused a page (413): split the window; None if it cannot be split."""
        return self._split(2)

    def _set(self, outcome: Outcome, progress: Progress) -> tuple[Outcome, Progress]:
        self.progress = progress
        return outcome, progress

    def _reset(self) -> None:
        self.seen.clear()
        self.union.clear()
        self.known.clear()
        self.union_total = None
        self._union_t0 = None
        self.reads = 0
        self._span = None
        self._top_closed = False

    def _done(self, now: int | None) -> tuple[Outcome, Progress]:
        p = self.progress
        hi = self.window.hi if now is None else min(self.window.hi, now)
        cursor = hi if p.cursor is None else max(p.cursor, hi)
        rest = p.windows[1:]
        self._reset()
        return self._set(Outcome.DONE, replace(
            p, cursor=cursor, windows=rest, page=1, tries=0, count0=None,
            synced=p.synced or not rest))

    def _dirty(self, now: int | None, steady: bool) -> tuple[Outcome, Progress]:
        """The read ended incomplete (``steady``: with the same count on every page)."""
        p = self.progress
        total = p.count0
        self._merge(steady, total)
        self.known |= self.seen
        if self.closed:
            self._top_closed = True   # read it again closed: a steady set, a union
        if self.union_total is not None and len(self.union) == total:
            return self._done(now)
        self.reads += 1
        if self.reads >= self.policy.max_reads:
            self.incomplete += 1
            if self.sweep:
                return self._done(now)
            return self._set(Outcome.LATER, replace(p, page=1, count0=None))
        if p.tries + 1 >= self.policy.max_tries and self._divisible():
            result = self._split(2)
            if result is not None:
                return result
        self.seen.clear()
        self.rereads += 1
        return self._set(Outcome.RETRY, replace(p, page=1, tries=p.tries + 1, count0=None))

    def _merge(self, steady: bool, total: int | None) -> None:
        """Fold an incomplete read into the union of reads, or start a new union.

        Reads join a union only with one steady ``total_count`` N on every page of every
        read. Closed reads: the window's set can only shrink, so steady means unchanged.
        Open reads: rows can enter, and a deletion paired with an entry keeps N steady;
        but every entry after the union's first page 1 was asked for is stamped at or
        after that time, so a union none of whose reads saw such a row that was not
        already known to be in the window (entries seen on page 1 of its first read were
        there before N was counted) holds only old rows and deleted ones, and as many
        unseen entries as it holds deleted ids: union == N leaves no old row out."""
        bounded = self._read_bounded
        if not steady or total is None or (not bounded and self._t1 is None):
            self.union, self.union_total, self._union_t0 = set(), None, None
            return
        joins = (self.union_total == total and self.union_bounded == bounded
                 and (bounded or not self._tainted))
        if not joins:
            if not bounded and self._entered:
                self.union, self.union_total, self._union_t0 = set(), None, None
                return
            self.union, self.union_total = set(), total
            self.union_bounded, self._union_t0 = bounded, self._t1
        self.union |= self.seen

    def _divisible(self) -> bool:
        """Whether cutting the window by time could divide its rows: not when every row
        seen has one ``updated_at`` (or times closer than the narrowest window)."""
        if self._span is None:
            return True
        return self._span[1] - self._span[0] >= 2 * self.policy.margin_ms

    def _split(self, parts: int) -> tuple[Outcome, Progress] | None:
        """Replace the window by smaller ones; None when it is open or too short to cut."""
        if not self.closed:
            return None
        spans = split(self.window, parts, max(2, 2 * self.policy.margin_ms))
        if len(spans) == 1:
            return None
        p = self.progress
        self._reset()
        return self._set(Outcome.SPLIT, replace(
            p, windows=spans + p.windows[1:], page=1, tries=0, count0=None))
