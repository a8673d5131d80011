"""The server's clock, estimated from its ``Date`` headers, robust to a bad sample.

Cursors live on the server's clock, never ours (a host whose clock is off by an hour must
not skip an hour of changes). Every response's ``Date`` is a *sample* of the server's
offset from our monotonic clock (``date - mono``). ``Date`` is truncated to the second, so
a sample is a lower bound of the true offset, and an estimate that is too low is the safe
side for a cursor (the next poll re-reads a little more); one that is too high skips
changes. Behind a load balancer one node can have a bad clock, so one sample must never
be believed on its own:

- The estimate follows the *lower median* of the last :data:`SAMPLES` samples, at once
  when that median is below it (lower is safe).
- Above it, the estimate gains at most :data:`DRIFT` of real elapsed time (1 ms a second),
  and at most :data:`MAX_GAIN_MS` in one step: it advances no faster than real time plus a
  small drift, however many outliers come.
- It jumps ahead only when the last :data:`QUORUM` samples agree (within
  :data:`AGREE_MS`), all above it, spread over at least :data:`QUORUM_SPAN_S` seconds of
  real time: the server's clock really was set forward.

Only the very first sample is taken alone (there is nothing else yet); the poller caps a
window's cursor by the estimate once the window is read, when later samples have outvoted
a bad first one.

**Deadlines are placed differently** (:meth:`ServerClock.to_local`). A server deadline (the
rate window's ``x-ratelimit-reset``) put on our clock through the estimate is late by up to
a second (the estimate sits anywhere in the second ``Date`` truncates): the practice would
wait that long after every reset. Every sample is a lower bound (``Date`` is truncated,
and the response left the server before we read it), so the *greatest* sample is still
one, and the closest: taken at different fractions of a second, within a fraction of a
second of the truth. Deadlines use the greatest of the recent samples and of the best one
ever seen, aged by :data:`DRIFT` per second (the two clocks may run at slightly different
rates): requests made right after each reset all sample the same fraction of a second,
and only an older sample taken at another fraction shows how late they are. Guarded like
the estimate: only samples at most :data:`REACH_MS` above the lower median of the recent
ones count (true samples lie within a second plus a response's latency of each other), so
a blip ahead cannot bring a deadline early, nor one behind hold it back. The cursor keeps
the estimate.

**An upper bound** (:meth:`ServerClock.upper`) is what a record's stamp must exceed to be
"stamped in the future" (:func:`notifier.core.diff.seen_mark`): a lower bound there would
mark an ordinary record edited a second before it was read. A sample is below the true
offset by the fraction of a second ``Date`` dropped plus the response's time in transit,
so the true offset is at most the greatest sample (as for deadlines) plus 1 s plus the
greatest round trip among the recent responses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

SAMPLES = 7
QUORUM = 5
QUORUM_SPAN_S = 20.0
AGREE_MS = 2_000
DRIFT = 0.001
MAX_GAIN_MS = 1_000
DEADLINE_SAMPLES = 16
"""Samples kept for placing deadlines: more fractions of a second seen, a closer bound."""
REACH_MS = 1_100
"""How far above the lower median a sample may be and still count for a deadline."""
DATE_RESOLUTION_MS = 1_000
"""``Date`` is truncated to the second: a sample is up to this much below the truth."""


@dataclass
class ServerClock:
    """``observe`` each response's ``Date``; ``now`` estimates the server's time."""

    _offset: int | None = None
    """The estimate: server time in ms = our monotonic time in ms + ``_offset``."""
    _since: float = 0.0
    """Monotonic time of the last rise of the estimate (the drift allowance runs from it)."""
    _samples: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=DEADLINE_SAMPLES))
    """The last samples, for deadlines (see the module's docstring)."""
    _best: tuple[int, float] | None = None
    """The greatest sample seen (within reach), and when: aged by DRIFT, for deadlines."""
    _latency: deque[float] = field(default_factory=lambda: deque(maxlen=DEADLINE_SAMPLES))
    """Round trips (s) of the responses behind :attr:`_recent`, for :meth:`upper`."""

    def observe(self, date_ms: int, mono: float, latency: float = 0.0) -> None:
        """A response's ``Date`` (ms), read at ``mono``, ``latency`` s after it was asked
        for (its round trip: the most it can have been in transit)."""
        sample = date_ms - round(mono * 1000)
        self._samples.append((sample, mono))
        self._recent.append(sample)
        self._latency.append(max(0.0, latency))
        center = self._center()
        if center <= sample <= center + REACH_MS and (
                self._best is None or sample >= self._aged_best(mono)):
            self._best = (sample, mono)
        if self._offset is None:
            self._offset, self._since = sample, mono
            return
        ordered = sorted(s for s, _ in self._samples)
        target = ordered[(len(ordered) - 1) // 2]
        if target <= self._offset:
            self._offset = target
            return
        recent = list(self._samples)[-QUORUM:]
        offsets = [s for s, _ in recent]
        if (len(recent) == QUORUM and min(offsets) > self._offset
                and max(offsets) - min(offsets) <= AGREE_MS
                and recent[-1][1] - recent[0][1] >= QUORUM_SPAN_S):
            self._offset, self._since = min(offsets), mono
            return
        gain = min(MAX_GAIN_MS, int(DRIFT * (mono - self._since) * 1000))
        if gain > 0:
            self._offset, self._since = min(target, self._offset + gain), mono

    def now(self, mono: float) -> int | None:
        """The server's time in ms at monotonic time ``mono``; None before any response."""
        if self._offset is None:
            return None
        return round(mono * 1000) + self._offset

    def _center(self) -> int:
        ordered = sorted(self._recent)
        return ordered[(len(ordered) - 1) // 2]

    def _aged_best(self, mono: float) -> int:
        assert self._best is not None
        sample, at = self._best
        return sample - int(DRIFT * max(0.0, mono - at) * 1000)

    def deadline_offset(self, mono: float) -> int | None:
        """The offset for placing server deadlines at ``mono``: the greatest sample, recent
        or the aged best, within :data:`REACH_MS` of the lower median (never below the
        estimate)."""
        if self._offset is None:
            return None
        center = self._center()
        candidates = [*self._recent, self._aged_best(mono)] if self._best else self._recent
        return max([self._offset, *(s for s in candidates if center <= s <= center + REACH_MS)])

    def to_local(self, server_ms: int, mono: float, wall: float) -> float | None:
        """Our wall-clock time (unix s) at which the server's clock shows ``server_ms``,
        at ``mono``/``wall`` now: late by a fraction of a second, never early (a sample
        is a lower bound of the server's time). None before any response."""
        offset = self.deadline_offset(mono)
        if offset is None:
            return None
        return wall + (server_ms - round(mono * 1000) - offset) / 1000

    def upper(self, mono: float) -> int | None:
        """The latest the server's time can be at ``mono`` (ms): the greatest sample
        (:meth:`deadline_offset`) plus ``Date``'s resolution plus the greatest recent
        round trip. None before any response."""
        offset = self.deadline_offset(mono)
        if offset is None:
            return None
        slack = DATE_RESOLUTION_MS + round(max(self._latency, default=0.0) * 1000)
        return round(mono * 1000) + offset + slack
