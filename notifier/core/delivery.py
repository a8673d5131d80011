"""What the outcome of one webhook attempt leads to: the whole decision, as a table.

Pure: no IO, the time and the random source are passed in.

    outcome of the attempt              action          the subscriber
    ---------------------------------   -------------   ----------------------------------
    2xx                                 ack             is no longer failing
    410 Gone                            disable         disabled; the event stays pending
                                                        and is retried at once on enable
    anything else, schedule not spent   retry (delay)   failing (since the first failure
                                                        after its last success)
    anything else, schedule spent       dead_letter     failing
    any failure while failing for at    + disable       disabled ("every attempt failed
    least ``disable_after``                             for N s")

"Anything else" is a timeout, a refused or reset connection, a URL that resolves to a
private address, any 5xx, 429, a redirect (never followed) and any 4xx but 410. A
``Retry-After`` (429, 503) lengthens the delay, up to an hour. "Failing" means: since the
subscriber's last 2xx, every attempt failed; it starts at the first failure after a
success and ends at the next success. An event that is no longer in the stream (trimmed
while it waited) is not sent at all: it is acknowledged and counted as lost.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from notifier.core.retry import Schedule

Outcome = Literal["delivered", "gone", "failed"]
Action = Literal["ack", "retry", "dead_letter", "disable"]


def outcome(status: int | None) -> Outcome:
    """``None``: no response at all (timeout, connection failure, refused URL)."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    return "failed"


@dataclass(frozen=True)
class Policy:
    """One subscriber's delivery settings that the decision depends on."""

    retry_schedule: Sequence[float]
    disable_after: float

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.retry_schedule)


@dataclass(frozen=True)
class Decision:
    action: Action
    attempts: int
    """Attempts made so far, this one included."""
    delay: float | None = None
    """For ``retry``: seconds until the next attempt."""
    disable: str | None = None
    """Why the subscriber is disabled, when it is (with ``disable``, or with ``retry`` or
    ``dead_letter`` when the subscriber has failed for too long)."""
    failing_since: float | None = None
    """When the subscriber started failing, after this attempt (None: it is not)."""


def decide(policy: Policy, status: int | None, earlier_attempts: int, now: float, *,
           failing_since: float | None, retry_after: float | None = None,
           rand: Callable[[], float] = random.random) -> Decision:
    """The decision for an attempt that got ``status`` after ``earlier_attempts`` failed
    ones, for a subscriber failing since ``failing_since`` (None: not failing)."""
    attempts = earlier_attempts + 1
    kind = outcome(status)
    if kind == "delivered":
        return Decision("ack", attempts)
    since = now if failing_since is None else failing_since
    if kind == "gone":
        return Decision("disable", attempts, delay=0.0,
                        disable="the endpoint answered 410 Gone", failing_since=since)
    too_long = (f"every attempt failed for {now - since:.0f}s"
                if now - since >= policy.disable_after else None)
    delay = policy.schedule.next_delay(attempts, retry_after=retry_after, rand=rand)
    if delay is None:
        return Decision("dead_letter", attempts, disable=too_long, failing_since=since)
    return Decision("retry", attempts, delay=delay, disable=too_long, failing_since=since)
