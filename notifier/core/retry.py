"""Retry decisions: backoff for polling, and the webhook delivery schedule.

Pure: the random source and the current time are passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

JITTER = 0.2
# A Retry-After is honoured, but never beyond this (a receiver asking for a day must not
# park an event for a day).
MAX_RETRY_AFTER = 3600.0


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential, capped, full jitter
    in the upper half so that many practices failing together do not retry in step."""
    ceiling = min(cap, base * float(2 ** min(attempt, 30)))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass(frozen=True)
class Schedule:
    """Delays between attempts after the first (``retry_schedule``), jittered."""

    delays: Sequence[float]
    jitter: float = JITTER

    @property
    def attempts(self) -> int:
        """How many attempts an event gets in all."""
        return len(self.delays) + 1

    def next_delay(self, failed: int, *, retry_after: float | None = None,
                   rand: Callable[[], float] = random.random) -> float | None:
        """Seconds until the next attempt after ``failed`` failed attempts (1-based);
        None when the schedule is exhausted and the event goes to the dead letters.

        A ``Retry-After`` (429, 503) is honoured when it asks for longer than the schedule,
        up to an hour.
        """
        if failed < 1 or failed > len(self.delays):
            return None
        delay = self.delays[failed - 1] * (1 - self.jitter + 2 * self.jitter * rand())
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return max(0.0, delay)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class TokenBucket:
    """``max_per_second`` as a token bucket; ``wait`` says how long until a token is free."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self.tokens = self.capacity
        self.stamp: float | None = None

    def wait(self, now: float) -> float:
        """Take a token at ``now`` if one is free (returns 0), else the seconds to wait."""
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
