"""The cursor rules: unit cases, and a model of Dentally's offset pagination driven through
arbitrary interleavings of updates and page reads (hypothesis)."""

from __future__ import annotations

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
    assert query_bounds(p.windows[0], True, P, last=True) == (48_999, None)


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
    """Rows with updated_at on the server's clock, listed with offset pagination."""

    order: str
    now: int = 10_000
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (updated, version)

    def write(self, rid: str) -> None:
        _, version = self.rows.get(rid, (0, 0))
        self.rows[rid] = (self.now, version + 1)

    def page(self, after: int | None, before: int | None, page: int,
             per_page: int) -> tuple[list[tuple[str, int]], int]:
        match = [(rid, u, v) for rid, (u, v) in self.rows.items()
                 if (after is None or u > after) and (before is None or u < before)]
        if self.order == "id":
            match.sort(key=lambda m: int(m[0]))
        else:
            match.sort(key=lambda m: (m[1], int(m[0])))
        chunk = match[(page - 1) * per_page: page * per_page]
        return [(rid, v) for rid, _, v in chunk], len(match)


M = Policy(overlap_ms=5, margin_ms=1, per_page=3, window_rows=9, max_tries=3)
op = st.tuples(st.integers(0, 40), st.sampled_from([0, 0, 0, 1, 2, 7, 50, 400]), st.booleans())
# (record id to write, ms the clock advances first, whether a page read happens after)


@settings(max_examples=300, deadline=None)
@given(order=st.sampled_from(["id", "updated_at"]), closed=st.booleans(),
       initial=st.integers(0, 30), ops=st.lists(op, max_size=120),
       lag=st.integers(0, 3), open_top=st.booleans())
def test_every_latest_version_is_observed(order: str, closed: bool, initial: int,
                                          ops: list[tuple[int, int, bool]], lag: int,
                                          open_top: bool) -> None:
    """Whatever updates interleave with page reads, once writes stop and one more poll
    runs, every record's latest version has been observed. Many rows share timestamps
    (the clock often does not advance), windows split, pages shift under the reader."""
    server = Server(order)
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
            window = reader.window
            after, before = query_bounds(window, closed, M,
                                         last=open_top and len(reader.progress.windows) == 1)
            rows, total = server.page(after, before, reader.progress.page, M.per_page)
            for rid, version in rows:
                seen[rid] = max(seen.get(rid, 0), version)
            _, progress = reader.page_read([rid for rid, _ in rows], total)
            while pending:  # writes land between page reads
                rid, advance, read_now = pending.pop(0)
                server.now += advance
                server.write(str(rid))
                if read_now:
                    break
        progress = reader.progress

    poll()
    while pending:
        poll()
        if pending:
            rid, advance, _ = pending.pop(0)
            server.now += advance
            server.write(str(rid))
    server.now += M.overlap_ms + 10
    poll()
    for rid, (_, version) in server.rows.items():
        assert seen.get(rid) == version, f"record {rid} version {version} never observed"
