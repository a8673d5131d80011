"""The server's clock, estimated from its ``Date`` headers.

Cursors live on the server's clock, never ours (a host whose clock is off by an hour must
not skip an hour of changes). ``Date`` is truncated to the second, so the true server time
is at least the header value: the estimate ``date + elapsed`` is a lower bound, which is the
safe side for a cursor.
"""

from __future__ import annotations

from dataclasses import dataclass

# A new sample lower than the estimate by more than this means the server's clock was set
# back: follow it instead of keeping the old, higher estimate.
_STEP_BACK_MS = 5_000


@dataclass
class ServerClock:
    """``observe`` each response's ``Date``; ``now`` estimates the server's time."""

    _date_ms: int | None = None
    _mono: float = 0.0

    def observe(self, date_ms: int, mono: float) -> None:
        current = self.now(mono)
        if current is None or date_ms > current or current - date_ms > _STEP_BACK_MS:
            self._date_ms, self._mono = date_ms, mono

    def now(self, mono: float) -> int | None:
        """The server's time in ms at monotonic time ``mono``; None before any response."""
        if self._date_ms is None:
            return None
        return self._date_ms + round((mono - self._mono) * 1000)
