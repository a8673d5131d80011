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
page moves or leaves the result and shifts every later row by one, so one row is skipped.
A window therefore counts as read only when it was read *cleanly*:

- it fitted in one page (one response is one consistent query), or
- ``total_count`` stayed the same on every page and the distinct ids seen equal it.

A window that was not read cleanly is read again from page 1. A closed window that stays
dirty, or that holds more rows than ``window_rows`` (deep pages fail with 413), is split
into smaller windows; a window that fits in one page is always clean, so splitting always
terminates in progress. The cursor moves to a window's ``hi`` only when it was read cleanly,
and the caller commits that move in the same atomic step as the events of its last page.
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
    max_split: int = 64


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
    DONE = "done"      # window read cleanly; cursor moved; maybe more windows pending
    RETRY = "retry"    # window dirty: read it again from page 1
    SPLIT = "split"    # window replaced by smaller ones


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


def query_bounds(window: Window, closed: bool, policy: Policy,
                 last: bool = False) -> tuple[int | None, int | None]:
    """The ``updated_after`` and ``updated_before`` values (ms) to send for ``window``.

    The ``last`` window of a poll (the one ending at the server's "now") is left open on
    top: rows changed since "now" was estimated come along at once instead of a poll later
    (the cursor still only moves to ``hi``).
    """
    after = None if window.lo is None else window.lo - policy.margin_ms
    # Exclusive at hi: a row written after the window was planned has updated_at >= hi
    # (hi is a lower bound of the server's time then), so it cannot enter the window, and
    # an entry could hide a departure from the count check. Rows at hi belong to the next
    # window, whose lower margin covers a bound Dentally might treat as inclusive.
    before = window.hi if closed and not last else None
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

    Holds the ids seen in this window (in memory only: a restarted process starts the window
    again). ``page_read`` returns the progress to persist with that page's events.
    """

    progress: Progress
    closed: bool
    policy: Policy
    seen: set[str] = field(default_factory=set)

    @property
    def window(self) -> Window:
        return self.progress.windows[0]

    def page_read(self, ids: list[str], total_count: int | None) -> tuple[Outcome, Progress]:
        p = self.progress
        page = p.page
        count0 = total_count if page == 1 else p.count0
        duplicate = any(i in self.seen for i in ids)
        self.seen.update(ids)
        short = len(ids) < self.policy.per_page

        if page == 1 and short:
            return self._done()
        if page == 1 and total_count is not None and total_count > self.policy.window_rows:
            parts = min(math.ceil(2 * total_count / self.policy.window_rows),
                        self.policy.max_split)
            result = self._split(parts)
            if result is not None:
                return result
        if total_count != count0 or (total_count is None and duplicate):
            return self._dirty()
        if not short:
            return self._set(Outcome.NEXT, replace(p, page=page + 1, count0=count0))
        if total_count is None or len(self.seen) == total_count:
            return self._done()
        return self._dirty()

    def too_deep(self) -> tuple[Outcome, Progress] | None:
        """The server refused a page (413): split the window; None if it cannot be split."""
        return self._split(2)

    def _set(self, outcome: Outcome, progress: Progress) -> tuple[Outcome, Progress]:
        self.progress = progress
        return outcome, progress

    def _done(self) -> tuple[Outcome, Progress]:
        p = self.progress
        hi = self.window.hi
        cursor = hi if p.cursor is None else max(p.cursor, hi)
        rest = p.windows[1:]
        self.seen.clear()
        return self._set(Outcome.DONE, replace(
            p, cursor=cursor, windows=rest, page=1, tries=0, count0=None,
            synced=p.synced or not rest))

    def _dirty(self) -> tuple[Outcome, Progress]:
        p = self.progress
        if p.tries + 1 >= self.policy.max_tries:
            result = self._split(2)
            if result is not None:
                return result
        self.seen.clear()
        return self._set(Outcome.RETRY, replace(p, page=1, tries=p.tries + 1, count0=None))

    def _split(self, parts: int) -> tuple[Outcome, Progress] | None:
        """Replace the window by smaller ones; None when it is open or too short to cut."""
        if not self.closed:
            return None
        spans = split(self.window, parts, max(2, 2 * self.policy.margin_ms))
        if len(spans) == 1:
            return None
        p = self.progress
        self.seen.clear()
        return self._set(Outcome.SPLIT, replace(
            p, windows=spans + p.windows[1:], page=1, tries=0, count0=None))
