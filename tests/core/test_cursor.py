"""The cursor rules: unit cases, and a model of Dentally's offset pagination driven through
arbitrary interleavings of updates and page reads (hypothesis)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.core.cursor import (
    FLOOR_MS,
    Outcome,
    Policy,
    Progress,
    Window,
    WindowRead,
    query_bounds,
    split,
    start,
)

P = Policy(overlap_ms=1000, margin_ms=1, per_page=3, window_rows=9, max_tries=3)


def test_first_poll_reads_from_the_beginning_to_server_now() -> None:
    p = start(Progress(), 50_000, P)
    assert p.windows == (Window(None, 50_000),)
    assert query_bounds(p.windows[0], True, P) == (None, 50_000)
    assert query_bounds(p.windows[0], False, P) == (None, None)


def test_next_poll_overlaps_the_cursor() -> None:
    p = start(Progress(cursor=50_000, synced=True), 60_000, P)
    assert p.windows == (Window(49_000, 60_000),)
    assert query_bounds(p.windows[0], True, P) == (48_999, 60_000)
    assert query_bounds(p.windows[0], False, P) == (48_999, None)


def test_server_clock_behind_the_overlap_plans_nothing() -> None:
    p = Progress(cursor=50_000, synced=True)
    assert start(p, 48_000, P) == p


def test_pending_windows_resume_at_page_one() -> None:
    p = Progress(cursor=10, windows=(Window(10, 20), Window(20, 30)), page=4, count0=7)
    assert start(p, 99, P) == Progress(cursor=10, windows=p.windows, page=1)


def test_split_covers_the_window_without_gaps() -> None:
    spans = split(Window(100, 200), 4)
    assert spans == (Window(100, 125), Window(125, 150), Window(150, 175), Window(175, 200))
    first = split(Window(None, FLOOR_MS + 1000), 2)
    assert first[0].lo is None and first[-1].hi == FLOOR_MS + 1000
    assert split(Window(5, 6), 2) == (Window(5, 6),)
    assert split(Window(0, 3000), 8, min_width=1000) == (
        Window(0, 1000), Window(1000, 2000), Window(2000, 3000))


def read(p: Progress, closed: bool = True) -> WindowRead:
    return WindowRead(p, closed, P)


def test_single_short_page_is_clean_and_moves_the_cursor() -> None:
    r = read(start(Progress(cursor=1000), 5000, P))
    outcome, p = r.page_read(["1", "2"], 2)
    assert outcome is Outcome.DONE
    assert p.cursor == 5000 and p.windows == () and p.synced


def test_pages_until_short_page_with_stable_count_is_clean() -> None:
    r = read(start(Progress(cursor=1000), 5000, P))
    assert r.page_read(["1", "2", "3"], 5)[0] is Outcome.NEXT
    assert r.progress.page == 2 and r.progress.cursor == 1000
    outcome, p = r.page_read(["4", "5"], 5)
    assert outcome is Outcome.DONE and p.cursor == 5000


def test_count_change_while_paging_restarts_the_window() -> None:
    r = read(start(Progress(cursor=1000), 5000, P))
    r.page_read(["1", "2", "3"], 5)
    outcome, p = r.page_read(["5"], 4)
    assert outcome is Outcome.RETRY and p.page == 1 and p.tries == 1 and p.cursor == 1000


def test_skipped_row_with_stable_count_restarts_the_window() -> None:
    r = read(start(Progress(cursor=1000), 5000, P))
    r.page_read(["1", "2", "3"], 6)
    outcome, _ = r.page_read(["3", "5"], 6)  # "3" served twice, "4" and "6" never
    assert outcome is Outcome.RETRY


def test_exact_multiple_of_page_size_ends_on_empty_page() -> None:
    r = read(start(Progress(cursor=1000), 5000, P))
    assert r.page_read(["1", "2", "3"], 3)[0] is Outcome.NEXT
    assert r.page_read([], 3)[0] is Outcome.DONE


def test_oversized_closed_window_is_split_at_once() -> None:
    r = read(start(Progress(cursor=1000), 9000, P))
    outcome, p = r.page_read(["1", "2", "3"], 30)
    assert outcome is Outcome.SPLIT
    assert len(p.windows) == 7 and p.windows[0].lo == 0 and p.windows[-1].hi == 9000
    assert p.cursor == 1000


def test_oversized_open_window_is_paged_through() -> None:
    r = read(start(Progress(cursor=1000), 9000, P), closed=False)
    assert r.page_read(["1", "2", "3"], 30)[0] is Outcome.NEXT


def test_repeatedly_dirty_closed_window_is_split() -> None:
    r = read(start(Progress(cursor=1000), 9000, P))
    for _ in range(P.max_tries - 1):
        r.page_read(["1", "2", "3"], 5)
        assert r.page_read(["4"], 4)[0] is Outcome.RETRY
    r.page_read(["1", "2", "3"], 5)
    assert r.page_read(["4"], 4)[0] is Outcome.SPLIT


def test_too_deep_splits_closed_windows_only() -> None:
    r = read(start(Progress(cursor=1000), 9000, P))
    result = r.too_deep()
    assert result is not None and result[0] is Outcome.SPLIT
    assert read(start(Progress(cursor=1000), 9000, P), closed=False).too_deep() is None


def test_cursor_never_moves_backwards() -> None:
    p = Progress(cursor=8000, windows=(Window(1000, 2000),))
    r = read(p)
    outcome, after = r.page_read(["1"], 1)
    assert outcome is Outcome.DONE and after.cursor == 8000


def test_no_total_count_uses_duplicates_as_the_dirty_signal() -> None:
    r = read(start(Progress(cursor=1000), 5000, P))
    r.page_read(["1", "2", "3"], None)
    assert r.page_read(["3", "4"], None)[0] is Outcome.RETRY
    r.page_read(["1", "2", "3"], None)
    assert r.page_read(["4"], None)[0] is Outcome.DONE


# -- a model of the real API ----------------------------------------------------------


@dataclass
class Server:
    """Rows with updated_at on the server's clock, listed with offset pagination that
    repeats and skips rows on its own (``unstable``: per row at a page boundary, the
    chance that it trades places with the next page's row), in one of three orders."""

    order: str
    unstable: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    now: int = 10_000
    next_id: int = 100
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (updated, version)
    deleted: set[str] = field(default_factory=set)

    def write(self, rid: str) -> None:
        if rid in self.deleted:   # ids are never reused
            return
        _, version = self.rows.get(rid, (0, 0))
        self.rows[rid] = (self.now, version + 1)

    def create(self) -> None:
        self.next_id += 1
        self.write(str(self.next_id))

    def delete(self, rid: str) -> None:
        if self.rows.pop(rid, None) is not None:
            self.deleted.add(rid)

    def page(self, after: int | None, before: int | None, page: int,
             per_page: int) -> tuple[list[tuple[str, int, int]], int]:
        match = [(rid, u, v) for rid, (u, v) in self.rows.items()
                 if (after is None or u > after) and (before is None or u < before)]
        if self.order == "id":
            match.sort(key=lambda m: int(m[0]))
        else:
            match.sort(key=lambda m: (m[1], int(m[0])), reverse=self.order == "-updated_at")
        offset = (page - 1) * per_page
        chunk = match[offset: offset + per_page]
        following = match[offset + per_page: offset + 2 * per_page]
        for i in range(min(len(chunk), len(following))):
            if self.rng.random() < self.unstable:
                chunk[-1 - i] = following[i]
        return [(rid, v, u) for rid, u, v in chunk], len(match)


M = Policy(overlap_ms=5, margin_ms=1, per_page=3, window_rows=9, max_tries=3, max_reads=6)
op = st.tuples(st.sampled_from(["write", "write", "create", "delete"]), st.integers(0, 40),
               st.sampled_from([0, 0, 0, 1, 2, 7, 50, 400]), st.booleans())
# (what happens, to which record, ms the clock advances first, whether a page read
#  happens after it)


def apply(server: Server, what: str, rid: int, advance: int) -> None:
    server.now += advance
    if what == "write":
        server.write(str(rid))
    elif what == "create":
        server.create()
    else:
        present = sorted(server.rows, key=int)
        if present:
            server.delete(present[rid % len(present)])


@settings(max_examples=400, deadline=None)
@given(order=st.sampled_from(["id", "updated_at", "-updated_at"]), closed=st.booleans(),
       initial=st.integers(0, 30), ops=st.lists(op, max_size=120), lag=st.integers(0, 3),
       unstable=st.sampled_from([0.0, 0.0, 0.05, 0.2]), seed=st.integers(0, 2**16))
def test_every_latest_version_is_observed(order: str, closed: bool, initial: int,
                                          ops: list[tuple[str, int, int, bool]], lag: int,
                                          unstable: float, seed: int) -> None:
    """Whatever creations, updates and deletions interleave with page reads, on pages that
    repeat and skip rows on their own, once writes stop and the polls catch up every
    record's latest version has been observed. Many rows share timestamps (the clock often
    does not advance), windows split, pages shift under the reader. ``closed`` False is an
    open window (appointments: no updated_before)."""
    server = Server(order, unstable, random.Random(seed))
    for i in range(initial):
        server.write(str(i))
        server.now += 0 if i % 3 else 100
    seen: dict[str, int] = {}
    progress = Progress()
    pending = list(ops)

    def poll() -> None:
        nonlocal progress
        progress = start(progress, server.now - lag, M)
        reader = WindowRead(progress, closed, M)
        steps = 0
        while reader.progress.windows:
            steps += 1
            assert steps < 5000, "the cursor rules made no progress"
            after, before = query_bounds(reader.window, reader.bounded, M)
            asked_at = server.now - lag
            rows, total = server.page(after, before, reader.progress.page, M.per_page)
            for rid, version, _ in rows:
                seen[rid] = max(seen.get(rid, 0), version)
            outcome, progress = reader.page_read([r[0] for r in rows], total,
                                                 [r[2] for r in rows], now=asked_at)
            while pending:  # writes land between page reads
                what, rid, advance, read_now = pending.pop(0)
                apply(server, what, rid, advance)
                if read_now:
                    break
            if outcome is Outcome.LATER:
                break
        progress = reader.progress

    poll()
    while pending:
        poll()
        if pending:
            apply(server, *pending.pop(0)[:3])
    server.now += M.overlap_ms + 10
    for _ in range(200):   # the instability goes on: a window may need several polls
        fresh = not progress.windows
        poll()
        if fresh and not progress.windows:   # one whole poll after the catch-up
            break
    assert not progress.windows, "a window was never read completely"
    for rid, (_, version) in server.rows.items():
        assert seen.get(rid) == version, f"record {rid} version {version} never observed"


def test_a_row_deleted_and_another_created_between_pages_of_an_open_window() -> None:
    """The case the model found: a read row is deleted and a row created before page 2;
    the counts agree, yet the row that slid onto page 1 was never read."""
    server = Server("id")
    for i in range(6):
        server.write(str(i))
    server.now += 1000
    r = WindowRead(start(Progress(cursor=9_000, synced=True), server.now, M), False, M)
    after, _ = query_bounds(r.window, False, M)
    rows, total = server.page(after, None, 1, 3)
    asked_at = server.now
    assert r.page_read([x[0] for x in rows], total, [x[2] for x in rows], asked_at)[0] \
        is Outcome.NEXT
    server.now += 5
    server.delete("0")
    server.create()
    rows, total = server.page(after, None, 2, 3)
    assert "3" not in [x[0] for x in rows]   # slid onto page 1: never served
    assert r.page_read([x[0] for x in rows], total, [x[2] for x in rows], server.now)[0] \
        is Outcome.NEXT
    rows, total = server.page(after, None, 3, 3)
    assert rows == [] and total == 6 and len(r.seen) == 6   # the counts agree
    outcome, p = r.page_read([], total, [], server.now)
    assert outcome is Outcome.RETRY and p.cursor == 9_000


def test_shared_timestamps_on_unstable_pages_complete_by_union() -> None:
    """300 rows with one updated_at cannot be split; 3% of rows per page repeated and
    skipped: the union of a few reads with a steady count completes the window."""
    server = Server("id", 0.03, random.Random(5))
    for i in range(300):
        server.write(str(i))
    server.now += 1000
    policy = Policy(per_page=100, window_rows=2000, margin_ms=1000)
    r = WindowRead(start(Progress(), server.now, policy), True, policy)
    reads = 0
    while r.progress.windows:
        after, before = query_bounds(r.window, r.bounded, policy)
        rows, total = server.page(after, before, r.progress.page, 100)
        outcome, _ = r.page_read([x[0] for x in rows], total, [x[2] for x in rows],
                                 server.now)
        assert outcome is not Outcome.SPLIT and outcome is not Outcome.LATER
        reads += outcome is Outcome.RETRY
    assert 1 <= reads < policy.max_reads and r.rereads == reads
    assert r.progress.cursor == server.now


def test_reads_are_bounded_and_a_sweep_accepts_its_union() -> None:
    policy = Policy(per_page=3, window_rows=100, margin_ms=1000, max_reads=3)
    for sweep, last in ((False, Outcome.LATER), (True, Outcome.DONE)):
        r = WindowRead(start(Progress(cursor=1000), 9000, policy), True, policy, sweep=sweep)
        outcomes = []
        for _ in range(policy.max_reads):
            r.page_read(["1", "2", "3"], 5, [5000] * 3, 9000)
            outcomes.append(r.page_read(["4"], 5, [5000], 9000)[0])   # "5": never served
        assert outcomes == [Outcome.RETRY] * (policy.max_reads - 1) + [last]
        assert r.incomplete == 1
        assert (r.progress.cursor == 9000) is sweep and bool(r.progress.windows) is not sweep


def test_the_cursor_stops_at_the_server_time_of_the_last_page() -> None:
    """A window planned from an outlier Date (10 minutes ahead) moves the cursor only as
    far as the server's time when its last page was asked for."""
    r = read(start(Progress(cursor=1000), 600_000 + 5000, P))
    outcome, p = r.page_read(["1"], 1, [4000], now=5000)
    assert outcome is Outcome.DONE and p.cursor == 5000


def test_an_open_window_on_unstable_pages_completes_by_union() -> None:
    """Appointments (no updated_before) on pages that repeat and skip rows: no single read
    is complete, but reads that saw no row enter form a union that is."""
    server = Server("id", 0.2, random.Random(3))
    for i in range(30):
        server.write(str(i))
    server.now += 1000
    r = WindowRead(start(Progress(), server.now, M), False, M)
    while r.progress.windows:
        assert not r.bounded
        after, before = query_bounds(r.window, r.bounded, M)
        rows, total = server.page(after, before, r.progress.page, M.per_page)
        outcome, _ = r.page_read([x[0] for x in rows], total, [x[2] for x in rows],
                                 server.now)
        assert outcome is not Outcome.LATER
    assert r.rereads >= 1 and r.progress.cursor == server.now


def test_a_row_entering_keeps_an_open_read_out_of_the_union() -> None:
    policy = Policy(per_page=3, window_rows=100, margin_ms=1, max_reads=8)
    r = WindowRead(start(Progress(cursor=1000), 9000, policy), False, policy)
    r.page_read(["1", "2", "3"], 5, [5000] * 3, 9000)
    assert r.page_read(["4"], 5, [5000], 9000)[0] is Outcome.RETRY   # "5" skipped
    # Between reads "1" is deleted and "6" created: the count stays 5.
    r.page_read(["2", "3", "4"], 5, [5000] * 3, 9100)
    outcome, p = r.page_read(["6"], 5, [9050], 9100)   # "5" skipped again
    assert outcome is Outcome.RETRY and p.cursor == 1000   # not {1,2,3,4,6} == 5
