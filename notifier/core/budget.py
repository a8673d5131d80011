"""The key's rate budget as Dentally counts it: how many requests, how fast, and when.

Pure: no IO, no clock reads; every method takes ``now`` (unix seconds on our clock) and
every server time arrives already converted to our clock. One :class:`Budget` belongs to
one API key, so several practices that share a key can share one instance.

Dentally (``docs/budget.md`` has the sources) limits a user's keys twice: about 3,600
requests in an hourly window that refills at ``x-ratelimit-reset`` (the window's alignment
and length are not documented: we never assume them), and a burst limit of about 10 requests
a second per key. The daemon's own ``share`` of the hourly budget is configured.

**The rules** (``Budget.earliest`` applies all of them; the first that binds is ``state``):

1. *The share is a hard cap over any window:* at most ``share`` requests in any span of
   ``window`` seconds (a sliding log of send times, so no alignment is assumed, over the
   window plus :data:`CAP_MARGIN` for arrival jitter), every request counted: steady
   polls, backfills, sweeps, key checks, retried refusals.
2. *Spread evenly:* requests conform to a cell rate of one per ``window / share`` seconds
   with at most :data:`SPREAD_BURST` back to back after a quiet spell (GCRA), so any span
   of ``s`` seconds carries at most ``s * share / window + SPREAD_BURST`` requests.
3. *Under the burst limit:* at most ``rate`` requests a second per key (the configured
   ``max_requests_per_second``). A 429 halves ``rate`` (:data:`PACE_DECREASE`, once per
   incident: not again for refusals of requests sent before the decrease) and blocks for
   its ``Retry-After``; every :data:`PACE_RECOVERY` seconds without a 429 the rate grows by
   :data:`PACE_INCREASE` back toward the configured one.
4. *Leave the others their reserve:* while the server's ``x-ratelimit-remaining`` is at
   most :data:`RESERVE_FRACTION` of its ``x-ratelimit-limit``, nothing is sent until its
   ``x-ratelimit-reset`` (plus :data:`RESET_MARGIN`). What the server said holds only
   until that reset: then it is forgotten, and the next request goes out at once.
5. *A refusal of the hourly cap* (403 ``Rate limit exceeded``, or 429 at zero remaining)
   blocks until the server's reset, or its ``Retry-After``; when it names neither (or a
   reset already past), probes 1, 2, 4, ... seconds apart, at most
   :data:`UNKNOWN_RESET_PROBE`, find out when it is over.

A refused request is sent again by the client once the budget allows (``Action.RETRY``):
a window being read resumes at the page it reached.

**Planning steady polls** (:func:`plan`): when the configured intervals need more requests
an hour than :data:`STEADY_SHARE` of the share, they are stretched, the steadiest first:
each resource's interval becomes at least ``level * weight`` (its weight is its default
interval over the shortest default, so reference data, listed in full hourly by default,
is stretched 60 times as far as appointments), with one ``level`` chosen to fit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum

CAP_MARGIN = 0.25
"""Seconds added to the window when counting the share (rule 1): requests sent a window
apart can arrive closer together than that, and the server counts arrivals."""

SPREAD_BURST = 2
"""Requests that may go back to back after a quiet spell (rule 2). With a share of 60 a
minute, no 10-second span carries more than 10 + 2 requests."""

RESERVE_FRACTION = 0.01
"""Of the server's ``x-ratelimit-limit``, what is left to the key's other integrations
(rule 4): 36 of Dentally's 3,600. It was a fixed 36 requests, whatever the limit."""

STEADY_SHARE = 1.0
"""Of the share, what the steady polls' intervals may plan to use before they are
stretched. All of it: a resource's backfill or sweep runs in place of its own polls, so it
uses that resource's part, plus whatever the other polls leave."""

RESET_MARGIN = 0.05
"""Seconds after the server's reset before the next request. The reset arrives already
on our clock, placed late by a fraction of a second and never early
(``ServerClock.to_local``: ``Date`` has whole seconds); this only absorbs rounding."""

DEFAULT_RETRY_AFTER = 1.0
"""How long a 429 without ``Retry-After`` blocks."""

MAX_SERVER_WAIT = 7200.0
"""Longest wait a server header may impose (a broken header must not silence a practice
for days); Dentally's window is an hour."""

UNKNOWN_RESET_PROBE = 60.0
"""While refused by the hourly cap with no reset known, one request this often."""

PACE_DECREASE = 0.5
"""A 429 multiplies the requests-per-second pace by this (rule 3)."""

PACE_INCREASE = 1.25
"""Every :data:`PACE_RECOVERY` seconds without a 429, the pace is multiplied by this, up to
the configured ``max_requests_per_second``."""

PACE_RECOVERY = 60.0

MIN_RATE = 0.2
"""The slowest pace 429s can bring us to: one request every 5 s."""

BULK_PATIENCE = 5
"""Slots (see ``Budget.slot_seconds``) a bulk request waits behind steady polls before it
goes in their turn: steady polls come first, but can never starve a backfill."""


class Priority(IntEnum):
    """Who goes first when several requests wait for the budget."""

    KEY = 0      # key checks and keep-alives: the key's life
    STEADY = 1   # the first page of a steady poll: what keeps changes prompt
    BULK = 2     # backfills, catch-up pages, sweeps: whatever is left


class State(Enum):
    """Why the next request waits (``OPEN``: it may go now)."""

    OPEN = "open"
    PACED = "paced"                  # rules 2, 3: spacing
    SHARE_SPENT = "share_spent"      # rule 1
    BACKING_OFF = "backing_off"      # rule 3: a 429's Retry-After
    RESERVE = "reserve"              # rule 4: the others' reserve is all that is left
    CAPPED = "capped"                # rule 5: refused by the hourly cap


class Refusal(Enum):
    NONE = "none"
    BURST = "burst"      # 429 from the burst limit
    HOURLY = "hourly"    # the hourly cap: 403 "Rate limit exceeded", or 429 at zero


class Action(Enum):
    USE = "use"      # the response is the answer (data or an error to raise)
    RETRY = "retry"  # rate refusal: send the same request again when the budget allows


@dataclass(frozen=True)
class Answer:
    """What a response says about the budget, times already on our clock."""

    status: int
    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None
    retry_after: float | None = None
    """Seconds, from ``Retry-After``."""
    error_type: str = ""
    error_message: str = ""


def classify(answer: Answer) -> Refusal:
    """Whether a response is a rate refusal, and of which limit.

    The reported body of the hourly cap (403 ``invalid_access_error`` "Rate limit
    exceeded") is rate limiting, never a scope denial or a revocation; so is any 403 when
    the server says nothing remains. Any other 403 is a scope denial.
    """
    message = answer.error_message.lower()
    if answer.status == 429:
        return Refusal.HOURLY if answer.remaining == 0 else Refusal.BURST
    if answer.status == 403 and ("rate limit" in message or "too many requests" in message
                                 or answer.remaining == 0
                                 or (answer.error_type == "invalid_access_error"
                                     and "limit" in message)):
        # At zero remaining, a scope denial is taken for the cap: waiting for the reset
        # costs one request; taking the cap for a missing scope would alarm a person and
        # stop the resource for a day.
        return Refusal.HOURLY
    return Refusal.NONE


@dataclass
class Budget:
    """One key's budget; see the module's rules. ``earliest`` / ``sent`` / ``answered``."""

    share: int
    """Requests allowed in any span of ``window`` seconds."""
    window: float = 3600.0
    max_rate: float = 5.0
    """Requests a second: the configured ``max_requests_per_second``."""

    rate: float = field(init=False)
    """The pace now: ``max_rate``, lowered by 429s."""
    log: deque[float] = field(default_factory=deque, init=False)
    tat: float = field(default=0.0, init=False)
    """GCRA's theoretical arrival time of the next request."""
    last_sent: float | None = field(default=None, init=False)
    backoff_until: float = field(default=0.0, init=False)
    capped_until: float = field(default=0.0, init=False)
    last_decrease: float = field(default=-math.inf, init=False)
    last_change: float = field(default=0.0, init=False)
    server_limit: int | None = field(default=None, init=False)
    server_remaining: int | None = field(default=None, init=False)
    server_reset: float | None = field(default=None, init=False)
    server_seen: float = field(default=0.0, init=False)
    hourly_streak: int = field(default=0, init=False)
    """Hourly refusals in a row that named no future reset (their probes back off)."""
    refusals: dict[str, int] = field(default_factory=lambda: {"burst": 0, "hourly": 0},
                                     init=False)

    def __post_init__(self) -> None:
        if self.share < 1 or self.window <= 0 or self.max_rate <= 0:
            raise ValueError("share, window and max_rate must be positive")
        self.rate = self.max_rate

    # -- queries -------------------------------------------------------------------------
    @property
    def interval(self) -> float:
        """The spread: seconds per request at the share's even pace."""
        return self.window / self.share

    @property
    def slot_seconds(self) -> float:
        """Seconds between requests at the pace now: the slower of the spread and the
        requests-per-second pace."""
        return max(self.interval, 1.0 / self.rate)

    @property
    def reserve(self) -> int:
        """Requests left to the key's other integrations (rule 4)."""
        return 0 if self.server_limit is None else int(self.server_limit * RESERVE_FRACTION)

    def used(self, now: float) -> int:
        """Requests sent in the last ``window`` (+ ``CAP_MARGIN``) seconds."""
        self._prune(now)
        return len(self.log)

    def earliest(self, now: float) -> tuple[float, State]:
        """When the next request may be sent (``now`` or later), and what holds it."""
        self._refresh(now)
        at, why = now, State.OPEN

        def later(t: float, state: State) -> None:
            nonlocal at, why
            if t > at:
                at, why = t, state
        later(self.capped_until, State.CAPPED)
        later(self.backoff_until, State.BACKING_OFF)
        if self.server_remaining is not None and self.server_remaining <= self.reserve:
            if self.server_reset is not None:
                later(self.server_reset + RESET_MARGIN, State.RESERVE)
            else:
                later(self.server_seen + UNKNOWN_RESET_PROBE, State.RESERVE)
        if len(self.log) >= self.share:
            later(self.log[-self.share] + self.window + CAP_MARGIN, State.SHARE_SPENT)
        later(self.tat - (SPREAD_BURST - 1) * self.interval, State.PACED)
        if self.last_sent is not None:
            later(self.last_sent + 1.0 / self.rate, State.PACED)
        return at, why

    def wait(self, now: float) -> float:
        return self.earliest(now)[0] - now

    def state(self, now: float) -> State:
        return self.earliest(now)[1]

    # -- events --------------------------------------------------------------------------
    def sent(self, now: float) -> None:
        """A request left now (the caller asked ``earliest`` first)."""
        self._refresh(now)
        self.log.append(now)
        self.tat = max(self.tat, now) + self.interval
        self.last_sent = now
        if self.server_remaining is not None:
            self.server_remaining = max(0, self.server_remaining - 1)
            if self.server_reset is None:
                self.server_seen = now   # the probe of rule 4 went

    def restore(self, times: Iterable[float], now: float) -> None:
        """Requests sent before a restart (kept in Redis): they count against the share
        and the spread as if this process had sent them, so that a restart within the
        window cannot spend the share twice. Times already known are not counted again;
        a time in our future (another host's clock) counts as now."""
        horizon = now - self.window - CAP_MARGIN
        merged = sorted(set(self.log) | {min(t, now) for t in times if t > horizon})
        self.log = deque(merged)
        self.tat = 0.0
        for t in merged:   # GCRA's state depends on the send times alone
            self.tat = max(self.tat, t) + self.interval
        if merged:
            self.last_sent = max(self.last_sent or merged[-1], merged[-1])

    def answered(self, now: float, sent_at: float, answer: Answer) -> Action:
        """A response arrived for the request sent at ``sent_at``."""
        self._observe(now, answer)
        kind = classify(answer)
        if kind is Refusal.NONE:
            self.hourly_streak = 0
            return Action.USE
        self.refusals[kind.value] += 1
        if kind is Refusal.BURST:
            wait = DEFAULT_RETRY_AFTER if answer.retry_after is None else answer.retry_after
            self.backoff_until = max(self.backoff_until, now + min(wait, MAX_SERVER_WAIT))
            if sent_at >= self.last_decrease:   # once per incident
                self.rate = max(MIN_RATE, self.rate * PACE_DECREASE)
                self.last_decrease = self.last_change = now
            return Action.RETRY
        # Nothing left until the reset, if one is known; else rule 5 alone decides.
        self.server_remaining = 0 if self.server_reset is not None else None
        if answer.retry_after is not None:
            until = now + answer.retry_after
        elif self.server_reset is not None and self.server_reset > now:
            until = self.server_reset + RESET_MARGIN
        else:
            # No reset named, or one already past (the window is turning): probe soon, then
            # less and less often.
            until = now + min(UNKNOWN_RESET_PROBE, DEFAULT_RETRY_AFTER * 2 ** self.hourly_streak)
            self.hourly_streak += 1
        self.capped_until = max(self.capped_until, min(until, now + MAX_SERVER_WAIT))
        return Action.RETRY

    # -- internals -----------------------------------------------------------------------
    def _prune(self, now: float) -> None:
        while self.log and self.log[0] <= now - self.window - CAP_MARGIN:
            self.log.popleft()

    def _refresh(self, now: float) -> None:
        self._prune(now)
        if self.server_reset is not None and now >= self.server_reset:
            # The server's window is over: what it said about it no longer holds.
            self.server_remaining = self.server_reset = None
        if self.rate < self.max_rate and now - self.last_change >= PACE_RECOVERY:
            self.rate = min(self.max_rate, self.rate * PACE_INCREASE)
            self.last_change = now

    def _observe(self, now: float, a: Answer) -> None:
        self._refresh(now)
        if a.limit is not None:
            self.server_limit = a.limit
        if a.remaining is None:
            return
        reset = a.reset_at
        if reset is not None:
            if reset <= now:
                # That window is already over: its count says nothing about the next.
                self.server_remaining = self.server_reset = None
                return
            reset = min(reset, now + MAX_SERVER_WAIT)
        same_window = (self.server_remaining is not None and reset is not None
                       and self.server_reset is not None
                       and abs(reset - self.server_reset) < 1.0)
        if same_window and self.server_remaining is not None:
            # Within one window the count only goes down; responses may arrive out of order.
            self.server_remaining = min(self.server_remaining, a.remaining)
        else:
            self.server_remaining = a.remaining
        self.server_reset = reset
        self.server_seen = now


def sized(max_requests_per_hour: int, window: float, max_requests_per_second: float
          ) -> Budget:
    """A key's budget from the practice's settings: the hourly share scaled to ``window``
    (at least one request)."""
    share = max(1, int(max_requests_per_hour * window / 3600.0))
    return Budget(share=share, window=window, max_rate=max_requests_per_second)


# -- planning steady polls --------------------------------------------------------------

@dataclass(frozen=True)
class Poll:
    name: str
    interval: float
    """Configured seconds between polls."""
    weight: float = 1.0
    """How far it is stretched relative to the others (its default interval over the
    shortest default: reference data 60, records 1)."""


@dataclass(frozen=True)
class Plan:
    polls: tuple[Poll, ...]
    effective: dict[str, float]
    need_per_hour: float
    """Requests an hour the configured intervals need (one per poll)."""
    share_per_hour: int
    per_second: float | None = None
    """The pace, when it allows fewer requests an hour than the share."""

    @property
    def stretched(self) -> bool:
        return any(self.effective[p.name] > p.interval for p in self.polls)

    def message(self) -> str:
        """``patients, appointments, invoices every 1 s need 10,800 requests/h; the share
        is 360; polling every 30 s instead`` (empty when nothing is stretched)."""
        if not self.stretched:
            return ""
        before = _groups([(p.name, p.interval) for p in self.polls])
        changed = [(p.name, self.effective[p.name]) for p in self.polls
                   if self.effective[p.name] > p.interval]
        after = _groups(changed)
        if len(changed) == len(self.polls) and len({v for _, v in changed}) == 1:
            after = f"every {_secs(changed[0][1])}"
        limit = f"the share is {self.share_per_hour:,}"
        if self.per_second is not None:
            limit = (f"the pace of {self.per_second:g} requests/s allows "
                     f"{round(self.per_second * 3600):,}")
        return (f"{before} need {round(self.need_per_hour):,} requests/h; {limit}; "
                f"polling {after} instead")


def _secs(seconds: float) -> str:
    if seconds >= 10 or seconds == int(seconds):
        return f"{math.ceil(seconds - 1e-9):,} s"
    return f"{seconds:.2f}".rstrip("0").rstrip(".") + " s"


def _groups(items: list[tuple[str, float]]) -> str:
    order: dict[float, list[str]] = {}
    for name, value in items:
        order.setdefault(value, []).append(name)
    return " and ".join(f"{', '.join(names)} every {_secs(v)}" for v, names in order.items())


def _round_up(seconds: float) -> float:
    if seconds >= 10:
        return float(math.ceil(seconds - 1e-9))
    return math.ceil(seconds * 100 - 1e-6) / 100


def plan(polls: Sequence[Poll], share_per_hour: int, per_second: float | None = None,
         steady_share: float = STEADY_SHARE) -> Plan:
    """The effective interval of every poll so that together they need at most
    ``steady_share`` of the share, or of what the pace of ``per_second`` allows, whichever
    is less (one request a poll); unchanged when they fit."""
    need = sum(3600.0 / p.interval for p in polls)
    paced = per_second is not None and per_second * 3600 < share_per_hour
    capacity = (per_second * 3600 if paced and per_second else share_per_hour) * steady_share
    effective = {p.name: p.interval for p in polls}
    if polls and need > capacity:
        def need_at(level: float) -> float:
            return sum(3600.0 / max(p.interval, level * p.weight) for p in polls)
        lo, hi = 0.0, 1.0
        while need_at(hi) > capacity:
            hi *= 2
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if need_at(mid) > capacity else (lo, mid)
        effective = {p.name: _round_up(max(p.interval, hi * p.weight)) if
                     hi * p.weight > p.interval else p.interval for p in polls}
    return Plan(tuple(polls), effective, need, share_per_hour,
                per_second if paced else None)
