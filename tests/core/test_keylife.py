from __future__ import annotations

import pytest

from notifier.core.keylife import (
    fingerprint,
    idle_days_left,
)

DAY = 86400.0


def test_idle_warning_after_ten_days() -> None:
    assert idle_days_left(0.0, 9 * DAY) is None
    assert idle_days_left(0.0, 11 * DAY) == pytest.approx(3.0)
    assert idle_days_left(0.0, 20 * DAY) == 0
    assert idle_days_left(None, 20 * DAY) is None


def test_fingerprint_is_short_stable_and_one_way() -> None:
    f = fingerprint("sk_live_abc")
    assert f == fingerprint("sk_live_abc") != fingerprint("sk_live_abd")
    assert len(f) == 16 and "abc" not in f
