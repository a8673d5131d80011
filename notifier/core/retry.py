"""Backoff schedules. Pure: the random source is passed in."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential, capped, full jitter
    in the upper half so that many practices failing together do not retry in step."""
    ceiling = min(cap, base * float(2 ** min(attempt, 30)))
    return ceiling / 2 + rand() * ceiling / 2
