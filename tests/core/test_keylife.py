from __future__ import annotations

import itertools

import pytest

from notifier.core.keylife import (
    fingerprint,
    idle_days_left,
    keepalive_wait,
    probe_wait,
)

DAY = 86400.0


def test_keepalive_is_due_every_interval_whatever_else_happens() -> None:
    interval = 6 * 3600.0
    last = 1_000_000.0
    uses = []
    now, end = last, last + 3 * DAY
    while now < end:  # a clock stepping a minute at a time
        if keepalive_wait(last, now, interval) == 0:
            uses.append(now)
            last = now
        now += 60
    gaps = [b - a for a, b in itertools.pairwise(uses)]
    assert gaps and all(g == interval for g in gaps)
    assert keepalive_wait(None, 5.0, interval) == 0


def test_idle_warning_after_ten_days() -> None:
    assert idle_days_left(0.0, 9 * DAY) is None
    assert idle_days_left(0.0, 11 * DAY) == pytest.approx(3.0)
    assert idle_days_left(0.0, 20 * DAY) == 0
    assert idle_days_left(None, 20 * DAY) is None


def test_probe_at_most_once_an_interval() -> None:
    assert probe_wait(None, 10.0, 3600) == 0
    assert probe_wait(10.0, 70.0, 3600) == 3540
    assert probe_wait(10.0, 4000.0, 3600) == 0


def test_fingerprint_is_short_stable_and_one_way() -> None:
    f = fingerprint("sk_live_abc")
    assert f == fingerprint("sk_live_abc") != fingerprint("sk_live_abd")
    assert len(f) == 16 and "abc" not in f
