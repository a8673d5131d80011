"""The API key's life as a pure state machine (in the style of h11's ``_state.py``).

Dentally expires a key unused for more than two weeks; a revoked key must not be hammered;
a missing scope stops one resource, not the practice; a rate limit stops every request
until the server's reset. Nothing here does IO or reads a clock: every input is an event
with the time passed in, and every output is an action for the caller (the practice
runner) to carry out. ``docs/key-lifecycle.md`` draws the table.

States::

    UNKNOWN       no answer yet for this key (start, or a new key): probe it at once
    LIVE          the key works; keep it alive every ``keepalive_interval``
    IDLE_WARNED   the key went unused past IDLE_WARNING (published once); any 2xx ends it
    CONFIRMING    a request got 401: requests stop, one probe (GET /v1/user) confirms
    REVOKED       a probe got 401: only a probe every ``probe_interval``, or at once on
                  a reload, an operator's ``key retry``, a new key or a restart
    RATE_LIMITED  a 429, or a 403 that says "Rate limit exceeded": nothing until reset

and per resource, orthogonally, *scope denied* (a 403 that is not a rate limit): that
resource waits ``scope_recheck_interval``; the rest carries on.

Events: ``Start`` (with what Redis remembers), ``NewKey``, ``Answer`` (one response
class: ok, unauthorized, forbidden, rate_limited, failed), ``Tick`` (a timer),
``RetryNow`` (SIGHUP or ``dentally-notifier key retry``).

Actions: ``Publish`` (a ``notifier.key.*`` / ``notifier.scope.denied`` event, once per
incident: its identity names the incident), ``Probe``, ``KeepAlive``, ``Pause``,
``Resume``, ``Persist`` (the key state for ``status``).

The machine also answers ``may_send``: the client asks it before every request, so that
after a 401 nothing but a probe leaves the process.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

EXPIRY = 14 * 86400.0          # Dentally expires a key idle for more than this
IDLE_WARNING = 10 * 86400.0    # warn (notifier.key.idle) past this much idleness
KEEPALIVE_RETRY = 60.0         # a failed keep-alive is tried again this soon
RATE_LIMIT_DEFAULT = 60.0      # a rate limit that names no reset lasts this long


def fingerprint(key: str) -> str:
    """A short, one-way identity of a key: tells keys apart without storing them."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def idle_days_left(last_success: float | None, now: float) -> float | None:
    """Days until expiry when the key has been idle past the warning threshold, else None."""
    if last_success is None or now - last_success <= IDLE_WARNING:
        return None
    return max(0.0, (last_success + EXPIRY - now) / 86400)


class State(enum.Enum):
    UNKNOWN = "unknown"
    LIVE = "live"
    IDLE_WARNED = "idle_warned"
    CONFIRMING = "confirming"
    REVOKED = "revoked"
    RATE_LIMITED = "rate_limited"


class Outcome(enum.Enum):
    """What one response means for the key."""

    OK = "ok"                      # 2xx
    UNAUTHORIZED = "unauthorized"  # 401
    FORBIDDEN = "forbidden"        # 403 that is not a rate limit: a missing scope
    RATE_LIMITED = "rate_limited"  # 429, or 403 "Rate limit exceeded" / at zero
    FAILED = "failed"              # 5xx, timeouts, anything else: says nothing of the key


RATE_LIMIT_TYPES = frozenset({"invalid_access_error"})


def classify(status: int, error_type: str = "", message: str = "",
             remaining: int | None = None) -> Outcome:
    """A response's class. A 403 is a rate limit when its body says so (``"Rate limit
    exceeded"``, observed with ``invalid_access_error``) or the budget is at zero; only
    then is it never taken for a missing scope, and never for a revocation."""
    if 200 <= status < 300:
        return Outcome.OK
    if status == 401:
        return Outcome.UNAUTHORIZED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status == 403:
        if "rate limit" in message.lower() or remaining == 0:
            return Outcome.RATE_LIMITED
        if error_type in RATE_LIMIT_TYPES and "limit" in message.lower():
            return Outcome.RATE_LIMITED
        return Outcome.FORBIDDEN
    return Outcome.FAILED


# -- events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The runner starts with key ``fp``; ``stored`` is the key state Redis kept."""
    fp: str
    stored: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NewKey:
    fp: str


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    probe: bool = False
    """The request was a probe (GET /v1/user to decide the key's fate)."""
    resource: str | None = None
    """The resource listed, for a scope denial."""
    reset_at: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class RetryNow:
    pass


Event = Start | NewKey | Answer | Tick | RetryNow


# -- actions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    type: str
    data: dict[str, object]
    identity: tuple[str, ...]
    """Names the incident: the same identity is never published twice."""


@dataclass(frozen=True)
class Probe:
    pass


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Pause:
    """Stop every poller: nothing but a probe may use the key."""


@dataclass(frozen=True)
class Resume:
    """Pollers may run."""


@dataclass(frozen=True)
class Persist:
    fields: dict[str, str]


Action = Publish | Probe | KeepAlive | Pause | Resume | Persist

REVOKED_ACTION = ("create a new API key in Dentally and give it to the notifier (key file "
                  "or environment), then reload it with SIGHUP")
SCOPE_ACTION = "create a key with read access to this resource, or remove it from resources"

# Where an answer takes the key: (state, outcome, was it a probe) -> next state. Absent
# pairs keep the state. Scope denials and rate limits are handled beside the table.
TRANSITIONS: dict[tuple[State, Outcome, bool], State] = {}
for _probe in (False, True):
    for _s in (State.UNKNOWN, State.LIVE, State.IDLE_WARNED, State.RATE_LIMITED):
        TRANSITIONS[(_s, Outcome.OK, _probe)] = State.LIVE
        TRANSITIONS[(_s, Outcome.UNAUTHORIZED, _probe)] = (State.REVOKED if _probe
                                                           else State.CONFIRMING)
    TRANSITIONS[(State.CONFIRMING, Outcome.OK, _probe)] = State.LIVE
    TRANSITIONS[(State.REVOKED, Outcome.OK, _probe)] = State.LIVE
TRANSITIONS[(State.CONFIRMING, Outcome.UNAUTHORIZED, True)] = State.REVOKED
TRANSITIONS[(State.REVOKED, Outcome.UNAUTHORIZED, True)] = State.REVOKED

STOPPED = frozenset({State.CONFIRMING, State.REVOKED})
"""States in which nothing but a probe may be sent."""


@dataclass
class KeyLife:
    """One key's lifecycle. Feed it events with ``handle(event, now)``; do what it returns."""

    keepalive_interval: float
    probe_interval: float
    scope_recheck_interval: float
    state: State = State.UNKNOWN
    fp: str = ""
    since: float = 0.0
    """When the current incident (revocation, idleness) began: part of its identity."""
    last_success: float | None = None
    last_probe: float | None = None
    probe_due: float | None = None
    """When a probe must go out (None: none wanted)."""
    probing: bool = False
    """A probe is in flight: no second one until it answers."""
    keepalive_sent: float | None = None
    rate_limited_until: float = 0.0
    resume_to: State = State.UNKNOWN
    denied: dict[str, float] = field(default_factory=dict)
    """Resource -> when its current denial began."""
    reason: str = ""
    idle_warned: float | None = None
    """The last success an idle warning was published for (one per incident)."""
    failures: int = 0
    """Inconclusive probes in a row (their retry backs off)."""
    replaces: tuple[str, str] | None = None
    """(fingerprint, since) of a revoked key this one replaces: its first 2xx publishes
    ``notifier.key.restored`` for that incident."""

    # -- queries ------------------------------------------------------------------------
    def may_send(self, now: float, probe: bool = False, resource: str | None = None) -> bool:
        """Whether a request may go out now (the client asks before each one)."""
        return probe or self.polling

    def rate_wait(self, now: float) -> float:
        """Seconds every request must wait for a rate limit's reset (0: none)."""
        if self.state is State.RATE_LIMITED or self.state in STOPPED:
            return max(0.0, self.rate_limited_until - now)
        return 0.0

    def next_deadline(self, now: float) -> float:
        """When ``Tick`` must next be handled (it may come earlier; never later)."""
        times = []
        if self.probe_due is not None and not self.probing:
            times.append(self.probe_due)
        if self.state is State.RATE_LIMITED:
            times.append(self.rate_limited_until)
        elif self.state in (State.LIVE, State.IDLE_WARNED):
            times.append(self._keepalive_due())
        if self.last_success is not None and self.idle_warned != self.last_success \
                and self.state not in STOPPED:
            times.append(self.last_success + IDLE_WARNING + 1e-3)
        return max(now, min(times)) if times else now + 3600.0

    def _keepalive_due(self) -> float:
        due = self.last_success if self.last_success is not None else self.since
        due += self.keepalive_interval
        if self.keepalive_sent is not None:
            due = max(due, self.keepalive_sent + min(KEEPALIVE_RETRY, self.keepalive_interval))
        return due

    def status(self) -> dict[str, str]:
        """The fields ``status`` shows (and a restart restores)."""
        state = {State.LIVE: "ok", State.IDLE_WARNED: "ok", State.RATE_LIMITED: "ok"}.get(
            self.state, self.state.value)
        return {"state": state, "lifecycle": self.state.value, "fingerprint": self.fp,
                "since": str(self.since), "reason": self.reason,
                "last_probe_at": "" if self.last_probe is None else str(self.last_probe),
                "last_success_at": "" if self.last_success is None
                else str(self.last_success),
                "next_probe_at": "" if self.probe_due is None else str(self.probe_due),
                "probing": "1" if self.probing else "0",
                "denied": ",".join(sorted(self.denied))}

    # -- events -------------------------------------------------------------------------
    @property
    def polling(self) -> bool:
        """Whether the pollers run (a rate limit keeps them, waiting, in the client)."""
        return self.state not in STOPPED and self.state is not State.UNKNOWN

    def handle(self, event: Event, now: float) -> list[Action]:
        was = self.polling if not isinstance(event, Start) else False
        if isinstance(event, Start):
            actions = self._start(event, now)
        elif isinstance(event, NewKey):
            actions = self._new_key(event.fp, now)
        elif isinstance(event, Answer):
            actions = self._answer(event, now)
        elif isinstance(event, RetryNow):
            actions = self._retry(now)
        else:
            actions = self._tick(now)
        if self.polling != was or isinstance(event, Start):
            actions.insert(0, Resume() if self.polling else Pause())
        return actions

    def _probe(self, now: float) -> list[Action]:
        self.probing = True
        self.last_probe = now
        return [Probe(), Persist(self.status())]

    def _start(self, event: Start, now: float) -> list[Action]:
        stored = event.stored
        self.fp = event.fp
        self.since = now
        if stored.get("fingerprint") == event.fp:
            self.last_success = _float(stored.get("last_success_at"))
            # Denials are remembered (not published again) but rechecked at once.
            self.denied = {r: now - self.scope_recheck_interval
                           for r in (stored.get("denied") or "").split(",") if r}
        elif stored.get("state") == "revoked" and stored.get("fingerprint"):
            self.replaces = (stored["fingerprint"], stored.get("since", ""))
        if stored.get("fingerprint") == event.fp and stored.get("state") == "revoked":
            # Remember the incident (so a restart publishes nothing again), but never
            # trust it for ever: probe at once.
            self.state = State.REVOKED
            self.since = _float(stored.get("since")) or now
            self.reason = stored.get("reason", "")
        self.probe_due = now
        return self._tick(now)

    def _new_key(self, fp: str, now: float) -> list[Action]:
        if fp == self.fp:
            return self._retry(now)
        if self.state in STOPPED:
            self.replaces = (self.fp, str(self.since))
        self.fp, self.state, self.since = fp, State.UNKNOWN, now
        self.last_success = self.keepalive_sent = self.idle_warned = None
        self.denied.clear()
        self.reason = ""
        self.failures = 0
        self.probe_due = now
        return self._probe(now)

    def _retry(self, now: float) -> list[Action]:
        """A reload or an operator: probe a stopped key now; recheck denied scopes now."""
        self.denied = {r: now - self.scope_recheck_interval for r in self.denied}
        if (self.state in STOPPED or self.state is State.UNKNOWN) and not self.probing:
            self.probe_due = now
            return self._probe(now)
        return []

    def scope_wait(self, resource: str, now: float) -> float:
        """Seconds before a denied resource may be listed again (0: now)."""
        began = self.denied.get(resource)
        if began is None:
            return 0.0
        return max(0.0, began + self.scope_recheck_interval - now)

    def _tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is State.RATE_LIMITED and now >= self.rate_limited_until:
            self.state = self.resume_to
        if self.probe_due is not None and now >= self.probe_due and not self.probing:
            actions += self._probe(now)
        if self.state in (State.LIVE, State.IDLE_WARNED) and now >= self._keepalive_due():
            self.keepalive_sent = now
            actions.append(KeepAlive())
        days = idle_days_left(self.last_success, now)
        if days is not None and self.idle_warned != self.last_success \
                and self.state not in STOPPED:
            last = self.last_success
            assert last is not None
            self.idle_warned = last
            if self.state is State.LIVE:
                self.state = State.IDLE_WARNED
            elif self.state is State.RATE_LIMITED and self.resume_to is State.LIVE:
                self.resume_to = State.IDLE_WARNED
            actions.append(Publish("notifier.key.idle",
                                   {"key": self.fp, "expires_in_days": round(days, 1),
                                    "action": "the key is used again as soon as Dentally "
                                              "answers; if it has expired, create a new one"},
                                   (self.fp, str(last))))
        return actions

    def _inconclusive_probe(self, now: float) -> None:
        """A probe that said nothing of the key (5xx, timeout, a 403 on /v1/user): again
        soon, backing off to a minute."""
        self.failures += 1
        self.probe_due = now + min(KEEPALIVE_RETRY, self.probe_interval,
                                   float(2 ** min(self.failures, 6)))

    def _answer(self, a: Answer, now: float) -> list[Action]:
        actions: list[Action] = []
        if a.probe:
            self.probing = False
        if a.outcome is Outcome.RATE_LIMITED:
            until = a.reset_at if a.reset_at is not None else now + RATE_LIMIT_DEFAULT
            if self.state is not State.RATE_LIMITED and self.state not in STOPPED:
                self.resume_to = self.state
                self.state = State.RATE_LIMITED
            self.rate_limited_until = max(self.rate_limited_until, until)
            if a.probe and self.probe_due is not None:
                self.probe_due = max(now, self.rate_limited_until)
            return actions
        if a.outcome is Outcome.FAILED or (a.outcome is Outcome.FORBIDDEN
                                           and a.resource is None):
            if a.probe:
                self._inconclusive_probe(now)
                actions.append(Persist(self.status()))
            return actions
        if a.outcome is Outcome.FORBIDDEN:
            assert a.resource is not None
            if a.resource not in self.denied:
                self.denied[a.resource] = now
                actions.append(Publish("notifier.scope.denied",
                                       {"resource": a.resource, "key": self.fp,
                                        "reason": a.reason, "action": SCOPE_ACTION},
                                       (a.resource, self.fp)))
                actions.append(Persist(self.status()))
            else:
                self.denied[a.resource] = now   # recheck again an interval from now
            return actions
        before = self.state
        if before is State.RATE_LIMITED:
            before = self.resume_to
        after = TRANSITIONS.get((self.state, a.outcome, a.probe), self.state)
        if a.outcome is Outcome.OK:
            self.last_success = now
            self.keepalive_sent = None
            self.failures = 0
            if a.resource is not None and self.denied.pop(a.resource, None) is not None:
                actions.append(Persist(self.status()))
        self.state = after
        if after is State.CONFIRMING and before is not State.CONFIRMING:
            self.reason = a.reason
            self.probe_due = now
            if not self.probing:
                actions += self._probe(now)
        elif after is State.REVOKED:
            self.probe_due = now + self.probe_interval
            if before is not State.REVOKED:
                self.since = now
                self.reason = a.reason or self.reason
                actions.append(Publish("notifier.key.revoked",
                                       {"reason": self.reason, "key": self.fp,
                                        "action": REVOKED_ACTION},
                                       (self.fp, str(self.since))))
            actions.append(Persist(self.status()))
        elif after is State.LIVE and before is not State.LIVE:
            self.probe_due = None
            if before is State.REVOKED:
                actions.append(Publish("notifier.key.restored", {"key": self.fp},
                                       (self.fp, "restored", str(self.since))))
            elif self.replaces is not None:
                old, since = self.replaces
                actions.append(Publish("notifier.key.restored",
                                       {"key": self.fp, "replaces": old},
                                       (old, "restored", since)))
            self.replaces = None
            if before is not State.IDLE_WARNED:
                self.since = now
            self.reason = ""
            actions.append(Persist(self.status()))
        return actions


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
