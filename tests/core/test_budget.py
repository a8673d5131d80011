"""The rate budget, with a simulated clock over many windows."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.core.budget import Budget


def run(b: Budget, seconds: float, step: float, bulk_demand: bool, steady_every: float
        ) -> tuple[Counter[int], Counter[int], list[float]]:
    """Drive the budget: a steady poll every ``steady_every`` s, bulk work always waiting."""
    steady, bulk, delays = Counter[int](), Counter[int](), []
    due = 0.0
    now = 0.0
    while now < seconds:
        window = int(now // b.window)
        if now >= due:
            w = b.wait(now, bulk=False)
            if w == 0:
                b.spend(now)
                steady[window] += 1
                delays.append(now - due)
                due += steady_every
        if bulk_demand and b.wait(now, bulk=True) == 0:
            b.spend(now)
            bulk[window] += 1
        now += step
    return steady, bulk, delays


def test_never_past_the_share_and_steady_polls_keep_their_interval() -> None:
    b = Budget(share=1800, window=3600, steady_per_window=4 * 60)
    steady, bulk, delays = run(b, 6 * 3600, 0.5, True, 15)
    for w in range(6):
        assert steady[w] + bulk[w] <= 1800
        assert bulk[w] > 1400   # the backfill gets what is left
    assert max(delays) <= 1.0   # a steady poll never waits behind the backfill


def test_spread_across_the_window() -> None:
    b = Budget(share=1800, window=3600)
    _, bulk, _ = run(b, 600, 0.5, True, 10**9)
    assert bulk[0] <= 1800 * 600 / 3600 + b.burst + 1   # a sixth of the hour, a sixth


def test_others_spending_the_budget_stops_us_until_the_reset() -> None:
    b = Budget(share=1800, window=3600, floor=10)
    b.observe(remaining=10, reset_at=3600.0, now=100.0)
    assert b.wait(100.0, bulk=False) == 3500.0
    assert b.wait(3600.0, bulk=False) == 0


def test_limited_blocks_until_reset() -> None:
    b = Budget(share=1800)
    b.limited(reset_at=500.0, now=100.0)
    assert b.wait(100.0, bulk=False) == 400.0
    assert b.wait(500.0, bulk=False) == 0


@settings(max_examples=50, deadline=None)
@given(share=st.integers(5, 400), steady=st.integers(0, 50), window=st.sampled_from([60, 3600]))
def test_share_holds_for_any_configuration(share: int, steady: int, window: int) -> None:
    b = Budget(share=share, window=window, steady_per_window=min(steady, share))
    s, k, _ = run(b, window * 3, window / 400, True, window / max(1, steady or 1))
    for w in range(3):
        assert s[w] + k[w] <= share
