from __future__ import annotations

import pytest

from notifier.core.retry import Schedule, TokenBucket, backoff, parse_retry_after

DEFAULT = Schedule([5, 300, 1800, 7200, 18000, 36000, 36000])


def test_default_schedule_with_jitter_bounds() -> None:
    assert DEFAULT.attempts == 8
    assert DEFAULT.next_delay(1, rand=lambda: 0.5) == 5
    assert DEFAULT.next_delay(1, rand=lambda: 0.0) == pytest.approx(4.0)
    assert DEFAULT.next_delay(1, rand=lambda: 1.0) == pytest.approx(6.0)
    assert DEFAULT.next_delay(7, rand=lambda: 0.5) == 36000
    assert DEFAULT.next_delay(8) is None
    assert DEFAULT.next_delay(0) is None


def test_retry_after_is_honoured_but_clamped() -> None:
    assert DEFAULT.next_delay(1, retry_after=120, rand=lambda: 0.5) == 120
    assert DEFAULT.next_delay(1, retry_after=1, rand=lambda: 0.5) == 5
    assert DEFAULT.next_delay(1, retry_after=86400, rand=lambda: 0.5) == 3600
    assert DEFAULT.next_delay(3, retry_after=60, rand=lambda: 0.5) == 1800


def test_parse_retry_after() -> None:
    assert parse_retry_after("30", 0) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None


def test_token_bucket() -> None:
    b = TokenBucket(2)
    assert [b.wait(0.0), b.wait(0.0)] == [0, 0]
    assert b.wait(0.0) == pytest.approx(0.5)
    assert b.wait(0.5) == 0
    assert b.wait(0.5) == pytest.approx(0.5)


def test_backoff_grows_and_caps() -> None:
    assert backoff(0, rand=lambda: 1.0) == 1
    assert backoff(3, rand=lambda: 0.0) == 4
    assert backoff(40, rand=lambda: 1.0) == 300
