"""The sandbox's two rate limits, as reports describe Dentally's, each switchable.

- **The hourly cap**, per Dentally user (all of that user's keys share it): ``rate_limit``
  requests per ``rate_window`` seconds, in a fixed window that either starts at the top of
  the window on the sandbox clock (``rate_window_start = "clock"``) or at the user's first
  request after the previous window ended (``"first_request"``, as Dentally's is reported
  to). At zero it answers ``rate_limit_status``: 403 with
  ``{"error": {"type": "invalid_access_error", "message": "Rate limit exceeded"}}`` and no
  ``Retry-After`` (reported), or 429 with ``Retry-After``.
- **The burst limit**, per key: at most ``burst_limit`` requests in any second (sliding),
  else 429 with ``Retry-After: 1``. Off when ``burst_limit`` is 0.

Every response that passed the key check carries ``x-ratelimit-limit``,
``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (unix seconds, rounded up, so a client
that waits for it is never early). Refused requests do not count against either limit.
Every decision is logged with its time, for tests that check spacing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

HOURLY_BODY: dict[str, object] = {
    "error": {"type": "invalid_access_error", "message": "Rate limit exceeded"}}
BURST_BODY: dict[str, object] = {
    "error": {"type": "rate_limited", "message": "Too many requests"}}


@dataclass(frozen=True)
class Verdict:
    status: int
    """200 when allowed; else 403 or 429."""
    headers: dict[str, str]
    body: dict[str, object] | None = None


@dataclass
class Limiter:
    windows: dict[int, tuple[int, int]] = field(default_factory=dict)
    """user id -> (window start ms, requests counted in it)"""
    per_window: dict[int, dict[int, int]] = field(default_factory=dict)
    """user id -> window start ms -> requests allowed in it"""
    recent: dict[str, deque[int]] = field(default_factory=dict)
    """key -> times (ms) of its allowed requests in the last second"""
    log: list[tuple[int, str, int]] = field(default_factory=list)
    """(time ms, key, status) of every request that reached the limits"""

    def clear(self) -> None:
        self.windows.clear()
        self.per_window.clear()
        self.recent.clear()
        self.log.clear()

    def admit(self, token: str, user_id: int, now: int, *, limit: int, window_s: float,
              start_mode: str, hourly_status: int, burst_limit: int) -> Verdict:
        length = max(1, int(window_s * 1000))
        known = self.windows.get(user_id)
        start, used = known if known is not None else (None, 0)
        if start_mode == "first_request":
            if start is None or now >= start + length:
                start, used = now, 0
        else:
            aligned = now - now % length
            if start != aligned:
                start, used = aligned, 0
        assert start is not None
        reset_s = -(-(start + length) // 1000)
        headers = {"x-ratelimit-limit": str(limit),
                   "x-ratelimit-remaining": str(max(0, limit - used)),
                   "x-ratelimit-reset": str(reset_s)}
        if used >= limit:
            # Nothing is counted, and a window that starts at the first request does not
            # start at a refused one.
            self.windows[user_id] = (start, used)
            self.log.append((now, token, hourly_status))
            if hourly_status == 429:
                retry = str(max(1, reset_s - now // 1000))
                return Verdict(429, {**headers, "retry-after": retry}, HOURLY_BODY)
            return Verdict(403, headers, HOURLY_BODY)
        recent = self.recent.setdefault(token, deque())
        while recent and recent[0] <= now - 1000:
            recent.popleft()
        if burst_limit > 0 and len(recent) >= burst_limit:
            self.windows[user_id] = (start, used)
            self.log.append((now, token, 429))
            return Verdict(429, {**headers, "retry-after": "1"}, BURST_BODY)
        recent.append(now)
        used += 1
        self.windows[user_id] = (start, used)
        counts = self.per_window.setdefault(user_id, {})
        counts[start] = counts.get(start, 0) + 1
        self.log.append((now, token, 200))
        headers["x-ratelimit-remaining"] = str(limit - used)
        return Verdict(200, headers)
