"""What grows with the number of practices: Redis connections, and the start-up herd."""

from __future__ import annotations

from notifier.config import PracticeConfig, Settings
from notifier.service.daemon import PRACTICE_CONNECTIONS, pool_size, start_delays


def practices(n: int, interval: float = 60.0) -> list[PracticeConfig]:
    return [PracticeConfig(name=f"p{i}", api_key=f"k{i}", poll_interval=interval,
                           resources=["patients", "appointments", "invoices", "payments",
                                      "treatment_plans"]) for i in range(n)]


def test_redis_pool_does_not_grow_with_practices() -> None:
    small = pool_size(Settings(practices=practices(2)))
    assert small == 16 + 2 * 10
    for n in (50, 1000):
        assert pool_size(Settings(practices=practices(n))) == 16 + PRACTICE_CONNECTIONS


def test_first_polls_are_spread_but_never_past_the_interval() -> None:
    assert start_delays([]) == {}
    assert start_delays(practices(1)) == {"p0": 0.0}
    ten = start_delays(practices(10))
    assert max(ten.values()) < 0.5   # a few practices start at once, as before
    big = start_delays(practices(1000))
    assert 45 < max(big.values()) < 50   # 20 a second
    assert len(set(big.values())) == 1000
    short = start_delays(practices(1000, interval=20))
    assert max(short.values()) < 20      # within the shortest interval
