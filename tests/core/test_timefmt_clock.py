from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.core.clock import ServerClock
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
    c.observe(1_001_000, 102.6)  # older truncated Date: the running estimate is kept
    assert c.now(102.6) == 1_002_600
    c.observe(1_010_000, 103.0)  # a later Date moves it forward
    assert c.now(103.0) == 1_010_000


def test_server_clock_follows_a_step_back() -> None:
    c = ServerClock()
    c.observe(1_000_000, 0.0)
    c.observe(900_000, 1.0)
    assert c.now(1.0) == 900_000
