"""The delivery decision table (core.delivery): every outcome, unit-tested without IO."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.core.delivery import Decision, Policy, decide, outcome

POLICY = Policy([5.0, 300.0], disable_after=1000.0)
MID = lambda: 0.5  # noqa: E731 - no jitter: the delay is the schedule's


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (204, "delivered"), (299, "delivered"), (410, "gone"),
    (None, "failed"), (301, "failed"), (400, "failed"), (404, "failed"), (429, "failed"),
    (500, "failed"), (503, "failed"), (199, "failed"),
])
def test_outcomes(status: int | None, expected: str) -> None:
    assert outcome(status) == expected


@pytest.mark.parametrize(("status", "earlier", "since", "expected"), [
    # 2xx: acknowledged, whatever came before; the subscriber is no longer failing
    (200, 0, None, Decision("ack", 1)),
    (204, 2, 50.0, Decision("ack", 3)),
    # a failure with the schedule not spent: retry after the schedule's delay
    (500, 0, None, Decision("retry", 1, delay=5.0, failing_since=100.0)),
    (None, 1, 90.0, Decision("retry", 2, delay=300.0, failing_since=90.0)),
    # the schedule spent (1 + 2 attempts): dead letter
    (400, 2, 90.0, Decision("dead_letter", 3, failing_since=90.0)),
    # 410 Gone: disable at once, the event retried at once when enabled
    (410, 0, None, Decision("disable", 1, delay=0.0,
                            disable="the endpoint answered 410 Gone", failing_since=100.0)),
    # failing for disable_after or longer: disabled as well as retried / dead-lettered
    (503, 0, -900.0, Decision("retry", 1, delay=5.0,
                              disable="every attempt failed for 1000s",
                              failing_since=-900.0)),
    (503, 2, -900.0, Decision("dead_letter", 3, disable="every attempt failed for 1000s",
                              failing_since=-900.0)),
    (503, 0, -899.0, Decision("retry", 1, delay=5.0, failing_since=-899.0)),
])
def test_decision_table(status: int | None, earlier: int, since: float | None,
                        expected: Decision) -> None:
    assert decide(POLICY, status, earlier, 100.0, failing_since=since, rand=MID) == expected


def test_retry_after_lengthens_the_delay_up_to_an_hour() -> None:
    d = decide(POLICY, 429, 0, 0.0, failing_since=None, retry_after=60.0, rand=MID)
    assert d.action == "retry" and d.delay == 60.0
    d = decide(POLICY, 503, 0, 0.0, failing_since=None, retry_after=86400.0, rand=MID)
    assert d.delay == 3600.0


def test_no_schedule_means_one_attempt() -> None:
    d = decide(Policy([], 10.0), 500, 0, 0.0, failing_since=None)
    assert d.action == "dead_letter" and d.attempts == 1


@given(st.one_of(st.none(), st.integers(100, 599)), st.integers(0, 10),
       st.one_of(st.none(), st.floats(-1e6, 100.0)), st.floats(0, 1))
def test_every_outcome_has_exactly_one_consistent_action(
        status: int | None, earlier: int, since: float | None, r: float) -> None:
    d = decide(POLICY, status, earlier, 100.0, failing_since=since, rand=lambda: r)
    assert d.attempts == earlier + 1
    if d.action == "ack":
        assert outcome(status) == "delivered" and d.failing_since is None and not d.disable
        return
    assert d.failing_since == (100.0 if since is None else since)
    assert (d.action == "retry") == (d.delay is not None and d.action != "disable") or \
        d.action == "disable"
    if d.action == "retry":
        assert d.delay is not None and 0 <= d.delay <= 3600
    if d.action == "disable":
        assert status == 410
    if d.disable and d.action != "disable":
        assert 100.0 - d.failing_since >= POLICY.disable_after
