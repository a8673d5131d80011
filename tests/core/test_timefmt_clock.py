from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.core.clock import DRIFT, MAX_GAIN_MS, QUORUM, ServerClock
from notifier.core.timefmt import format_ms, parse_ms


def test_dentally_timestamps_with_offsets() -> None:
    assert parse_ms("2026-07-04T20:35:55.599+01:00") == parse_ms("2026-07-04T19:35:55.599Z")
    assert format_ms(parse_ms("2026-07-04T20:35:55.599+01:00")) == "2026-07-04T19:35:55.599Z"


def test_naive_means_utc_and_micros_truncate() -> None:
    assert parse_ms("2026-11-27T15:00:00.123456") == parse_ms("2026-11-27T15:00:00.123Z")


def test_garbage_names_the_value() -> None:
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_ms("yesterday")


@given(st.integers(-10**12, 10**13))
def test_round_trip(ms: int) -> None:
    assert parse_ms(format_ms(ms)) == ms


def test_server_clock_follows_date_headers_and_elapsed_time() -> None:
    c = ServerClock()
    assert c.now(100.0) is None
    c.observe(1_000_000, 100.0)
    assert c.now(102.5) == 1_002_500
    c.observe(1_002_000, 102.6)  # an older truncated Date: the lower bound is followed
    assert c.now(102.6) == 1_002_000


def test_server_clock_follows_a_step_back() -> None:
    c = ServerClock()
    c.observe(1_000_000, 0.0)
    c.observe(900_000, 1.0)
    assert c.now(1.0) == 900_000


MIN10 = 600_000


def steady(c: ServerClock, start: float, n: int, step: float = 1.0, skew: int = 0) -> float:
    """``n`` good samples (server time = 10^12 + mono in ms), ``step`` seconds apart."""
    t = start
    for _ in range(n):
        c.observe(10**12 + round(t * 1000) + skew, t)
        t += step
    return t


def test_one_outlier_never_moves_the_estimate_ahead() -> None:
    c = ServerClock()
    t = steady(c, 0.0, 3)
    c.observe(10**12 + round(t * 1000) + MIN10, t)   # /v1/user from a node 10 min ahead
    assert c.now(t) is not None and c.now(t) <= 10**12 + round(t * 1000) + 1


def test_a_three_response_blip_is_outvoted() -> None:
    c = ServerClock()
    t = steady(c, 0.0, 2)
    for _ in range(3):
        c.observe(10**12 + round(t * 1000) + MIN10, t)
        t += 0.1
    now = c.now(t)
    assert now is not None and now <= 10**12 + round(t * 1000) + 5   # a drift's worth
    t = steady(c, t, 5)
    assert c.now(t) == 10**12 + round(t * 1000)


def test_several_agreeing_samples_over_time_move_it_ahead() -> None:
    c = ServerClock()
    t = steady(c, 0.0, 3)
    t = steady(c, t, 4, step=10.0, skew=MIN10)
    assert c.now(t) < 10**12 + round(t * 1000) + 1000   # four agree: not yet
    t = steady(c, t, 1, step=10.0, skew=MIN10)
    assert c.now(t) == 10**12 + round(t * 1000) + MIN10


@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(0, 999),
                          st.integers(0, QUORUM - 1), st.integers(1, 3_600_000)),
                max_size=60))
def test_outlier_runs_shorter_than_a_quorum_never_run_ahead(
        steps: list[tuple[float, int, int, int]]) -> None:
    """Good samples (truncated: up to 999 ms low) interleaved with runs of up to four
    outliers up to an hour ahead: the estimate never runs ahead of the true time by more
    than the drift allows (1 ms a second, at most 1 s a step)."""
    c = ServerClock()
    t = 0.0
    c.observe(10**12, t)
    for gap, trunc, bad, ahead in steps:
        t += gap
        c.observe(10**12 + round(t * 1000) - trunc, t)
        for _ in range(bad):
            c.observe(10**12 + round(t * 1000) + ahead, t)
        now = c.now(t)
        assert now is not None
        assert now <= 10**12 + round(t * 1000) + DRIFT * t * 1000 + MAX_GAIN_MS


@given(st.integers(0, 999), st.lists(st.floats(0.0, 0.4), min_size=1, max_size=20),
       st.booleans())
def test_upper_is_never_below_the_servers_time(frac: int, latencies: list[float],
                                                behind: bool) -> None:
    """``upper`` bounds the server's time from above (a record stamped past it is stamped
    in the future): every response's ``Date`` truncated, each in transit for up to its
    round trip, and every third one (a minority) from a node whose clock is 10 s behind."""
    offset = 1_795_000_000_000 + frac        # server ms = our mono ms + offset
    clock = ServerClock()
    mono = 100.0
    for i, rtt in enumerate(latencies):
        mono += 1.0 + rtt
        date = round((mono - rtt / 2) * 1000) + offset - (10_000 if behind and i % 3 == 2 else 0)
        clock.observe(date - date % 1000, mono, latency=rtt)
        bound = clock.upper(mono)
        assert bound is not None and bound >= round(mono * 1000) + offset
    # ... and not far above it: the slack is 1 s plus the greatest recent round trip.
    assert bound <= round(mono * 1000) + offset + 1000 + round(max(latencies) * 1000)
    assert ServerClock().upper(1.0) is None
