"""The rate budget's rules, with a simulated clock (no IO, no sleeping)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.core.budget import (
    CAP_MARGIN,
    DEFAULT_RETRY_AFTER,
    MAX_SERVER_WAIT,
    MIN_RATE,
    PACE_RECOVERY,
    RESET_MARGIN,
    SPREAD_BURST,
    UNKNOWN_RESET_PROBE,
    Action,
    Answer,
    Budget,
    Poll,
    Refusal,
    State,
    classify,
    plan,
    sized,
)
from notifier.core.clock import ServerClock

HOURLY_403 = Answer(403, error_type="invalid_access_error",
                    error_message="Rate limit exceeded")


def most_in_span(times: list[float], span: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - span + 1e-9:   # float noise of sums
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def drive(b: Budget, wants: list[float], until: float, start: float = 0.0) -> list[float]:
    """Pollers that each want a request every ``wants[i]`` seconds, each waiting for the
    budget before it sends: the send times."""
    due = [start] * len(wants)
    sent: list[float] = []
    while True:
        i = min(range(len(due)), key=due.__getitem__)
        t = b.earliest(due[i])[0]
        if t >= until:
            return sent
        b.sent(t)
        b.answered(t, t, Answer(200))
        sent.append(t)
        due[i] = t + wants[i]


# -- rules 1 and 2: the share is a hard cap over any window, spread evenly ---------------

def test_steady_polls_are_capped_and_spread() -> None:
    """The reproduction: 360 an hour, three resources every second. The old budget let
    steady polls through unchecked (181 requests in the first minute)."""
    b = sized(360, 3600, 5)
    sent = drive(b, [1.0, 1.0, 1.0], until=3 * 3600)
    assert most_in_span(sent, 60) <= 6 + SPREAD_BURST        # 181 before
    assert most_in_span(sent, 3600) <= 360
    assert most_in_span(sent, 600) <= 60 + SPREAD_BURST
    assert len(sent) >= 3 * 360 - 3                           # and the share is used


def test_sixty_a_minute_no_ten_seconds_over_twelve() -> None:
    b = sized(3600, 60, 5)
    assert b.share == 60
    sent = drive(b, [0.1] * 5, until=600)
    assert most_in_span(sent, 10) <= math.ceil(60 / 6) + 2
    assert most_in_span(sent, 60) <= 60


@settings(max_examples=60, deadline=None)
@given(share=st.integers(1, 400), window=st.sampled_from([2.0, 60.0, 3600.0]),
       rate=st.floats(0.5, 20), wants=st.lists(st.floats(0.01, 120), min_size=1,
                                                max_size=6))
def test_the_caps_hold_for_any_demand(share: int, window: float, rate: float,
                                      wants: list[float]) -> None:
    b = Budget(share=share, window=window, max_rate=rate)
    sent = drive(b, wants, until=3 * window)
    assert most_in_span(sent, window + CAP_MARGIN) <= share
    for span in (window / 6, window / 2):
        assert most_in_span(sent, span) <= math.floor(span * share / window) + SPREAD_BURST
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(g >= 1 / rate - 1e-9 for g in gaps)


def test_share_spent_says_when_it_is_back() -> None:
    b = Budget(share=3, window=100, max_rate=10)
    for t in (0.0, 0.0, 40.0):
        b.sent(t)
    # GCRA spreads them first; force three into the window and look at rule 1 alone.
    b.tat = 0.0
    assert b.earliest(50.0) == (100.0 + CAP_MARGIN, State.SHARE_SPENT)
    assert b.used(50.0) == 3 and b.used(100.0 + CAP_MARGIN) == 1


# -- rule 3: the burst pace and 429s ------------------------------------------------------

def test_pace_spaces_requests_per_second() -> None:
    b = Budget(share=10_000, window=3600, max_rate=5)
    b.sent(0.0)
    assert b.earliest(0.0) == (pytest.approx(0.2), State.PACED)


def test_a_429_slows_the_pace_once_per_incident_and_waits() -> None:
    b = Budget(share=10_000, window=3600, max_rate=8)
    for t in (0.0, 0.125, 0.25):
        b.sent(t)
    burst = Answer(429, remaining=100, retry_after=2)
    assert b.answered(0.3, 0.0, burst) is Action.RETRY
    assert b.rate == 4
    assert b.earliest(0.3) == (2.3, State.BACKING_OFF)
    # The other two were sent before the pace changed: their 429s do not halve it again.
    b.answered(0.31, 0.125, burst)
    b.answered(0.32, 0.25, burst)
    assert b.rate == 4 and b.refusals["burst"] == 3
    b.sent(2.3)
    b.answered(2.4, 2.3, Answer(429, remaining=99))   # sent at the new pace: halve again
    assert b.rate == 2 and b.earliest(2.4)[0] == pytest.approx(2.4 + DEFAULT_RETRY_AFTER)


def test_the_pace_recovers_after_quiet_minutes_up_to_the_configured_one() -> None:
    b = Budget(share=10_000, window=3600, max_rate=5)
    b.answered(0.0, 0.0, Answer(429, remaining=10))
    assert b.rate == 2.5
    b.earliest(PACE_RECOVERY - 1)
    assert b.rate == 2.5
    rates = []
    for k in range(1, 6):
        b.earliest(k * PACE_RECOVERY + 1)
        rates.append(b.rate)
    assert rates == sorted(rates) and rates[0] > 2.5 and rates[-1] == 5


def test_the_pace_never_drops_below_the_minimum() -> None:
    b = Budget(share=10_000, window=3600, max_rate=1)
    for k in range(20):
        b.sent(float(k))
        b.answered(float(k), float(k), Answer(429, remaining=10, retry_after=0))
    assert b.rate == MIN_RATE


# -- rule 4: the server's reset and the reserve ------------------------------------------

def test_the_reserve_is_a_fraction_of_the_servers_limit() -> None:
    b = Budget(share=100)
    for limit, reserve in ((3600, 36), (1000, 10), (200, 2), (30, 0)):
        b.answered(0.0, 0.0, Answer(200, limit=limit, remaining=500, reset_at=10.0))
        assert b.reserve == reserve


def test_waits_for_the_servers_reset_then_goes_at_once() -> None:
    """Not the budget's own idea of the window: the server's reset, whenever it is."""
    b = Budget(share=1800, window=3600)
    b.answered(100.0, 100.0, Answer(200, limit=3600, remaining=36, reset_at=1234.5))
    assert b.earliest(100.0) == (1234.5 + RESET_MARGIN, State.RESERVE)
    assert b.earliest(1234.5 + RESET_MARGIN) == (1234.5 + RESET_MARGIN, State.OPEN)
    assert b.server_remaining is None   # what it said held until its reset only
    assert RESET_MARGIN < 1.0           # "within a second"


def reset_lateness(seed: int, *, blips: bool = False, old: bool = False) -> float:
    """One simulated run: ~20 responses at irregular times (our clock 100 s behind the
    server's, whose ``Date`` is truncated to the second), the last with nothing left until
    a reset a few seconds on; the reset goes through the server clock (as the client puts
    it on our clock) into the budget. Returns how long after the server's real reset the
    budget lets the next request go (negative: early). ``old``: placed by the estimate the
    cursor uses, as before."""
    rng = random.Random(seed)
    offset = 1_795_000_000 + rng.random()     # server time = monotonic + offset
    wall_offset = offset - 100.0              # our wall clock, 100 s behind the server
    clock = ServerClock()
    t = rng.uniform(0, 50)
    for i in range(20):
        t += rng.uniform(0.2, 1.3)            # polls and pages, at the pacer's spacing
        latency = rng.uniform(0.001, 0.05)
        date_ms = math.floor(t + latency / 2 + offset) * 1000
        if blips and i in (15, 18):           # one node 10 min ahead, one 10 min behind
            date_ms += 600_000 if i == 15 else -600_000
        clock.observe(date_ms, t + latency)
    recv = t + latency
    reset = math.ceil(t + latency / 2 + offset) + rng.randint(1, 3)   # server seconds
    wall = recv + wall_offset
    if old:
        est = clock.now(recv)
        assert est is not None
        reset_at = wall + reset - est / 1000
    else:
        local = clock.to_local(reset * 1000, recv, wall)
        assert local is not None
        reset_at = local
    budget = Budget(share=3600, window=3600)
    budget.answered(wall, t + wall_offset,
                    Answer(200, limit=30, remaining=0, reset_at=reset_at))
    at, state = budget.earliest(wall)
    assert state is State.RESERVE
    cursor = clock.now(recv)
    assert cursor is not None and cursor <= (recv + offset) * 1000   # cursor: never ahead
    return at - (reset - offset + wall_offset)


def test_after_a_reset_the_next_request_may_go_within_a_fraction_of_a_second() -> None:
    """Issue 9: "after a reset the next poll goes out within a second". The lower-median
    estimate the cursor uses puts the reset anywhere in the second ``Date`` truncates (plus
    RESET_MARGIN); the greatest recent sample is never early and a fraction late."""
    late = [reset_lateness(seed) for seed in range(300)]
    assert min(late) >= RESET_MARGIN - 1e-6                    # never early
    assert max(late) <= RESET_MARGIN + 0.4, max(late)
    assert sum(late) / len(late) <= RESET_MARGIN + 0.1
    old = [reset_lateness(seed, old=True) for seed in range(300)]
    assert max(old) > 1.0   # what it was (with a margin of 0.2 s): up to 1.2 s


def test_a_date_blip_either_way_neither_hastens_nor_delays_the_reset() -> None:
    late = [reset_lateness(seed, blips=True) for seed in range(300)]
    assert min(late) >= RESET_MARGIN - 1e-6 and max(late) <= RESET_MARGIN + 0.4, \
        (min(late), max(late))


def test_a_stale_remaining_does_not_outlive_the_reset() -> None:
    b = Budget(share=1800, window=3600)
    b.answered(0.0, 0.0, Answer(200, limit=30, remaining=0, reset_at=3.0))
    assert b.state(2.9) is State.RESERVE
    assert b.state(3.0 + RESET_MARGIN) is State.OPEN
    b.sent(3.2)
    b.answered(3.3, 3.2, Answer(200, limit=30, remaining=1, reset_at=6.0))  # others: 28
    assert b.state(3.5) is State.OPEN      # 1 left, reserve of 30 is 0
    b.sent(3.5)
    assert b.state(3.6) is State.RESERVE   # counted locally before the answer


def test_answers_arriving_out_of_order_never_raise_remaining_in_one_window() -> None:
    b = Budget(share=1800)
    b.answered(0.0, 0.0, Answer(200, limit=3600, remaining=100, reset_at=500.0))
    b.answered(0.1, 0.0, Answer(200, limit=3600, remaining=150, reset_at=500.4))
    assert b.server_remaining == 100
    b.answered(501.0, 501.0, Answer(200, limit=3600, remaining=3599, reset_at=4100.0))
    assert b.server_remaining == 3599   # a new window


def test_a_reset_already_past_says_nothing_and_an_absurd_one_is_capped() -> None:
    b = Budget(share=1800)
    b.answered(10.0, 10.0, Answer(200, limit=3600, remaining=0, reset_at=9.0))
    assert b.state(10.0) is State.OPEN
    b.answered(10.0, 10.0, Answer(200, limit=3600, remaining=0, reset_at=10.0 + 10**9))
    assert b.earliest(10.0)[0] == 10.0 + MAX_SERVER_WAIT + RESET_MARGIN


def test_without_a_reset_header_probes_once_a_while() -> None:
    b = Budget(share=1800)
    b.answered(0.0, 0.0, Answer(200, limit=3600, remaining=0))
    assert b.earliest(0.0) == (UNKNOWN_RESET_PROBE, State.RESERVE)
    b.sent(UNKNOWN_RESET_PROBE)
    assert b.earliest(UNKNOWN_RESET_PROBE)[0] == 2 * UNKNOWN_RESET_PROBE


# -- rule 5: the hourly cap --------------------------------------------------------------

@pytest.mark.parametrize(("answer", "kind"), [
    (HOURLY_403, Refusal.HOURLY),
    (Answer(403, error_message="rate limit exceeded, try later"), Refusal.HOURLY),
    (Answer(403, remaining=0), Refusal.HOURLY),
    (Answer(403, remaining=0, error_message="Key lacks scope"), Refusal.HOURLY),
    (Answer(403, remaining=12, error_message="Key lacks scope patients:read"), Refusal.NONE),
    (Answer(403), Refusal.NONE),
    (Answer(429, remaining=5, retry_after=1), Refusal.BURST),
    (Answer(429, retry_after=1), Refusal.BURST),
    (Answer(429, remaining=0, retry_after=1800), Refusal.HOURLY),
    (Answer(401, error_message="Rate limit exceeded"), Refusal.NONE),
    (Answer(200, remaining=0), Refusal.NONE),
])
def test_classify(answer: Answer, kind: Refusal) -> None:
    assert classify(answer) is kind


def test_the_hourly_403_waits_for_the_reset_and_does_not_slow_the_pace() -> None:
    b = Budget(share=1800, max_rate=5)
    b.answered(0.0, 0.0, Answer(200, limit=3600, remaining=40, reset_at=900.0))
    b.sent(1.0)
    capped = Answer(403, limit=3600, remaining=0, reset_at=900.0,
                    error_type="invalid_access_error", error_message="Rate limit exceeded")
    assert b.answered(1.1, 1.0, capped) is Action.RETRY
    assert b.earliest(1.1) == (900.0 + RESET_MARGIN, State.CAPPED)
    assert b.rate == 5 and b.refusals == {"burst": 0, "hourly": 1}
    assert b.state(900.0 + RESET_MARGIN) is State.OPEN


def test_the_hourly_cap_without_a_reset_probes_with_backoff() -> None:
    b = Budget(share=1800)
    waits = []
    now = 0.0
    for _ in range(9):
        b.sent(now)
        b.answered(now, now, HOURLY_403)
        at = b.earliest(now)[0]
        waits.append(at - now)
        now = at
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) == UNKNOWN_RESET_PROBE
    b.sent(now)
    b.answered(now, now, Answer(200))
    b.sent(now + 10)
    b.answered(now + 10, now + 10, HOURLY_403)
    assert b.earliest(now + 10)[0] == now + 11   # a success starts the probes afresh


def test_the_hourly_429_follows_its_retry_after() -> None:
    b = Budget(share=1800, max_rate=5)
    b.answered(0.0, 0.0, Answer(429, remaining=0, retry_after=30))
    assert b.earliest(0.0) == (30.0, State.CAPPED) and b.rate == 5


# -- sizing ------------------------------------------------------------------------------

def test_sized_scales_the_hourly_share_to_the_window() -> None:
    assert sized(1800, 3600, 5).share == 1800
    assert sized(3600, 60, 5).share == 60
    assert sized(360, 2, 5).share == 1   # never zero
    b = sized(36_000, 6, 7.5)
    assert (b.share, b.window, b.max_rate, b.interval) == (60, 6, 7.5, 0.1)
    with pytest.raises(ValueError):
        Budget(share=0)


# -- planning: stretching the intervals ---------------------------------------------------

def test_stretched_intervals_and_the_message_of_the_issue() -> None:
    p = plan([Poll("patients", 1), Poll("appointments", 1), Poll("invoices", 1)], 360)
    assert p.effective == {"patients": 30, "appointments": 30, "invoices": 30}
    assert p.message() == ("patients, appointments, invoices every 1 s need 10,800 "
                           "requests/h; the share is 360; polling every 30 s instead")


def test_nothing_stretched_when_it_fits() -> None:
    p = plan([Poll("patients", 60), Poll("sites", 3600, 60)], 1800)
    assert not p.stretched and p.message() == ""
    assert p.effective == {"patients": 60, "sites": 3600}


def test_reference_data_is_stretched_before_appointments() -> None:
    p = plan([Poll("appointments", 60), Poll("sites", 60, 60)], 60)
    assert p.effective["sites"] >= 3600       # stretched sixtyfold first
    assert p.effective["appointments"] <= 62  # barely touched
    assert "sites every 60 s" in p.message()


def test_the_pace_also_bounds_the_plan() -> None:
    p = plan([Poll("patients", 0.1), Poll("appointments", 0.1)], 200_000, per_second=5)
    assert p.effective == {"patients": 0.4, "appointments": 0.4}
    assert "the pace of 5 requests/s allows 18,000" in p.message()


@settings(max_examples=100, deadline=None)
@given(intervals=st.lists(st.tuples(st.floats(0.05, 7200), st.sampled_from([1.0, 60.0])),
                          min_size=1, max_size=12),
       share=st.integers(1, 20_000))
def test_a_plan_always_fits_and_only_ever_stretches(intervals: list[tuple[float, float]],
                                                    share: int) -> None:
    polls = [Poll(f"r{i}", v, w) for i, (v, w) in enumerate(intervals)]
    p = plan(polls, share)
    assert sum(3600 / p.effective[q.name] for q in polls) <= share * (1 + 1e-9)
    for q in polls:
        assert p.effective[q.name] >= q.interval
    if p.stretched:
        # steadiest first: a heavier poll is never stretched by a smaller factor than
        # a lighter one that was stretched too.
        factor = {q.name: p.effective[q.name] / q.interval for q in polls}
        for a in polls:
            for c in polls:
                if a.weight > c.weight and factor[c.name] > 1.01 and a.interval <= c.interval:
                    assert factor[a.name] >= factor[c.name] * 0.99


def test_requests_from_before_a_restart_count_against_the_share_and_the_spread() -> None:
    before = Budget(share=4, window=10.0)
    sent = []
    for now in (0.0, 0.0, 2.5, 5.0):
        at = before.earliest(now)[0]
        before.sent(at)
        sent.append(at)
    after = Budget(share=4, window=10.0)        # a new process, at 6 s
    after.restore([*sent, -20.0], 6.0)          # one from a window long gone: ignored
    assert after.used(6.0) == 4
    assert after.earliest(6.0) == before.earliest(6.0)
    assert after.state(6.0) is State.SHARE_SPENT
    after.restore(sent, 6.0)                    # told twice: counted once
    assert after.used(6.0) == 4
    future = Budget(share=4, window=10.0)
    future.restore([100.0], 6.0)                # another host's clock ahead: counts as now
    assert future.log[0] == 6.0
