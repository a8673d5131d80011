"""The practice's rate budget: a fixed window (Dentally's clock hour) shared with other
integrations, of which this daemon uses at most its configured share.

Pure: time is passed in. ``wait(now, bulk)`` says how long a request must wait; ``spend``
counts one. Three rules, in order:

1. Never past the share: at most ``share`` requests in a window, and never when the
   server says the key's whole budget is (nearly) spent by everyone.
2. Steady polls first: they are spread by their own intervals and wait for nothing else;
   bulk work (backfills, sweeps) may only use what the steady polls will not need for the
   rest of the window (``steady_per_window``).
3. Spread, not burst: by a fraction ``f`` of the window, bulk work may have brought the
   total to ``f * share`` plus a small burst, so a backfill cannot empty the budget in its
   first minutes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Budget:
    share: int
    window: float = 3600.0
    steady_per_window: float = 0.0
    """Requests the steady polls need per window (resources x window / interval)."""
    floor: int = 0
    """Server-side requests to leave for the other integrations of the same key."""
    start: float | None = None
    used: int = 0
    server_remaining: int | None = None
    server_reset: float | None = None
    blocked_until: float = 0.0

    @property
    def burst(self) -> float:
        return max(2.0, self.share * 0.02)

    def _roll(self, now: float) -> None:
        start = now - now % self.window
        if self.start is None or start > self.start:
            self.start, self.used = start, 0
            if self.server_reset is not None and self.server_reset <= now:
                self.server_remaining = None

    def observe(self, remaining: int | None, reset_at: float | None, now: float) -> None:
        """What the server's ``x-ratelimit-*`` headers say (everyone's use of the key)."""
        self._roll(now)
        if remaining is not None:
            self.server_remaining = remaining
            self.server_reset = reset_at

    def limited(self, reset_at: float | None, now: float) -> None:
        """A 429 or a 403 at zero: nothing until the reset."""
        end = (self.start or now) + self.window
        self.blocked_until = max(self.blocked_until, reset_at if reset_at else end)

    def wait(self, now: float, bulk: bool) -> float:
        """Seconds until a request may be made (0: now)."""
        self._roll(now)
        assert self.start is not None
        end = self.start + self.window
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.used >= self.share:
            return end - now
        if self.server_remaining is not None and self.server_remaining <= self.floor:
            reset = self.server_reset if self.server_reset and self.server_reset > now else end
            return reset - now
        if not bulk:
            return 0.0  # steady polls are spread by their intervals and go first
        elapsed = (now - self.start) / self.window
        reserve = self.steady_per_window * (1 - elapsed)
        allowance = min(self.share * elapsed + self.burst, self.share - reserve)
        if self.used + 1 <= allowance:
            return 0.0
        rate = self.share / self.window
        return min(end - now, (self.used + 1 - allowance) / rate if rate else end - now)

    def spend(self, now: float) -> None:
        self._roll(now)
        self.used += 1
        if self.server_remaining is not None:
            self.server_remaining -= 1
