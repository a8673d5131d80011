"""The key's lifecycle state machine: its transitions one by one, and properties over any
sequence of responses, timers, reloads and new keys (hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.core import keylife as kl
from notifier.core.keylife import Answer, KeyLife, Outcome, State

KEEPALIVE, PROBE, RECHECK = 600.0, 3600.0, 1800.0
T0 = 1_800_000_000.0


def life() -> KeyLife:
    return KeyLife(keepalive_interval=KEEPALIVE, probe_interval=PROBE,
                   scope_recheck_interval=RECHECK)


def kinds(actions: list[kl.Action]) -> list[str]:
    return [type(a).__name__ if not isinstance(a, kl.Publish) else a.type for a in actions]


# -- classification -------------------------------------------------------------------
@pytest.mark.parametrize(("status", "etype", "message", "remaining", "outcome"), [
    (200, "", "", None, Outcome.OK),
    (401, "", "", None, Outcome.UNAUTHORIZED),
    (429, "", "", None, Outcome.RATE_LIMITED),
    (403, "invalid_access_error", "Rate limit exceeded", None, Outcome.RATE_LIMITED),
    (403, "invalid_access_error", "Rate limit exceeded", 12, Outcome.RATE_LIMITED),
    (403, "forbidden", "", 0, Outcome.RATE_LIMITED),
    (403, "forbidden", "Key lacks scope invoices:read", 12, Outcome.FORBIDDEN),
    (403, "invalid_access_error", "Access denied", 12, Outcome.FORBIDDEN),
    (500, "", "", None, Outcome.FAILED),
    (404, "", "", None, Outcome.FAILED),
])
def test_responses_are_classified(status: int, etype: str, message: str,
                                  remaining: int | None, outcome: Outcome) -> None:
    assert kl.classify(status, etype, message, remaining) is outcome


def test_the_hourly_cap_403_is_a_rate_limit_never_a_denial_or_a_revocation() -> None:
    k = life()
    k.handle(kl.Start("fp1"), T0)
    k.handle(Answer(Outcome.OK, probe=True), T0)
    outcome = kl.classify(403, "invalid_access_error", "Rate limit exceeded")
    actions = k.handle(Answer(outcome, resource="patients", reset_at=T0 + 900), T0 + 1)
    assert k.state is State.RATE_LIMITED and not k.denied
    assert not any(isinstance(a, kl.Publish) for a in actions)
    assert k.rate_wait(T0 + 1) == 899
    k.handle(kl.Tick(), T0 + 900)
    assert k.state is State.LIVE and k.rate_wait(T0 + 900) == 0


# -- transitions ----------------------------------------------------------------------
def test_start_probes_and_polls_only_after_the_key_answers() -> None:
    k = life()
    assert kinds(k.handle(kl.Start("fp1"), T0)) == ["Pause", "Probe", "Persist"]
    assert not k.may_send(T0) and k.may_send(T0, probe=True)
    assert kinds(k.handle(Answer(Outcome.OK, probe=True), T0 + 1)) == ["Resume", "Persist"]
    assert k.state is State.LIVE and k.may_send(T0 + 1)


def test_a_401_is_confirmed_by_one_probe_then_published_once() -> None:
    k = life()
    k.handle(kl.Start("fp1"), T0)
    k.handle(Answer(Outcome.OK, probe=True), T0)
    acts = k.handle(Answer(Outcome.UNAUTHORIZED, resource="patients", reason="401"), T0 + 5)
    assert kinds(acts) == ["Pause", "Probe", "Persist"] and k.state is State.CONFIRMING
    # A second poller's 401 while confirming: no second probe.
    assert k.handle(Answer(Outcome.UNAUTHORIZED, resource="invoices"), T0 + 5) == []
    acts = k.handle(Answer(Outcome.UNAUTHORIZED, probe=True, reason="401"), T0 + 6)
    assert kinds(acts) == ["notifier.key.revoked", "Persist"] and k.state is State.REVOKED
    assert not k.may_send(T0 + 7)
    assert k.next_deadline(T0 + 7) == T0 + 6 + PROBE
    assert kinds(k.handle(kl.Tick(), T0 + 6 + PROBE)) == ["Probe", "Persist"]
    assert kinds(k.handle(Answer(Outcome.UNAUTHORIZED, probe=True), T0 + 6 + PROBE)) == \
        ["Persist"]


def test_a_401_not_confirmed_resumes_without_an_event() -> None:
    k = life()
    k.handle(kl.Start("fp1"), T0)
    k.handle(Answer(Outcome.OK, probe=True), T0)
    k.handle(Answer(Outcome.UNAUTHORIZED, resource="patients"), T0 + 5)
    acts = k.handle(Answer(Outcome.OK, probe=True), T0 + 6)
    assert kinds(acts) == ["Resume", "Persist"] and k.state is State.LIVE


def test_restart_remembers_a_revocation_but_probes_it_at_once() -> None:
    stored = {"state": "revoked", "fingerprint": "fp1", "since": str(T0)}
    k = life()
    assert kinds(k.handle(kl.Start("fp1", stored), T0 + 100)) == ["Pause", "Probe", "Persist"]
    assert k.state is State.REVOKED
    # Still revoked: nothing published again (the same incident).
    assert kinds(k.handle(Answer(Outcome.UNAUTHORIZED, probe=True), T0 + 100)) == ["Persist"]
    # A reload or "key retry" probes at once, whatever the probe interval says.
    assert kinds(k.handle(kl.RetryNow(), T0 + 200)) == ["Probe", "Persist"]
    acts = k.handle(Answer(Outcome.OK, probe=True), T0 + 200)
    assert kinds(acts) == ["Resume", "notifier.key.restored", "Persist"]
    restored = acts[1]
    assert isinstance(restored, kl.Publish) and restored.identity == ("fp1", "restored",
                                                                      str(T0))


def test_a_new_key_replacing_a_revoked_one_is_announced_as_restored() -> None:
    k = life()
    k.handle(kl.Start("fp1"), T0)
    k.handle(Answer(Outcome.UNAUTHORIZED, probe=True), T0)
    assert kinds(k.handle(kl.NewKey("fp2"), T0 + 10)) == ["Probe", "Persist"]
    acts = k.handle(Answer(Outcome.OK, probe=True), T0 + 11)
    assert kinds(acts) == ["Resume", "notifier.key.restored", "Persist"]
    assert k.fp == "fp2"


def test_scope_denial_is_per_resource_published_once_and_rechecked() -> None:
    k = life()
    k.handle(kl.Start("fp1"), T0)
    k.handle(Answer(Outcome.OK, probe=True), T0)
    acts = k.handle(Answer(Outcome.FORBIDDEN, resource="invoices", reason="403"), T0 + 1)
    assert kinds(acts) == ["notifier.scope.denied", "Persist"]
    assert k.state is State.LIVE and k.may_send(T0 + 2)
    assert k.scope_wait("invoices", T0 + 1) == RECHECK and k.scope_wait("patients", T0) == 0
    assert k.handle(Answer(Outcome.FORBIDDEN, resource="invoices"), T0 + 1 + RECHECK) == []
    k.handle(kl.RetryNow(), T0 + 2000)
    assert k.scope_wait("invoices", T0 + 2000) == 0
    assert kinds(k.handle(Answer(Outcome.OK, resource="invoices"), T0 + 2001)) == ["Persist"]
    assert not k.denied


def test_idle_key_is_warned_once_at_start_and_the_warning_ends_with_a_success() -> None:
    stored = {"state": "ok", "fingerprint": "fp1", "last_success_at": str(T0 - 11 * 86400)}
    k = life()
    acts = k.handle(kl.Start("fp1", stored), T0)
    idle = [a for a in acts if isinstance(a, kl.Publish)]
    assert [p.type for p in idle] == ["notifier.key.idle"]
    assert idle[0].data["expires_in_days"] == 3.0
    assert kinds(k.handle(Answer(Outcome.OK, probe=True), T0 + 1)) == ["Resume", "Persist"]
    assert k.state is State.LIVE


def test_keepalive_is_due_an_interval_after_the_last_success() -> None:
    k = life()
    k.handle(kl.Start("fp1"), T0)
    k.handle(Answer(Outcome.OK, probe=True), T0)
    k.handle(Answer(Outcome.OK, resource="patients"), T0 + 100)
    assert k.next_deadline(T0 + 200) == T0 + 100 + KEEPALIVE
    assert kinds(k.handle(kl.Tick(), T0 + 100 + KEEPALIVE)) == ["KeepAlive"]
    # Failed: tried again a minute later, not in a tight loop.
    assert k.next_deadline(T0 + 100 + KEEPALIVE) == T0 + 160 + KEEPALIVE


# -- properties -----------------------------------------------------------------------
@dataclass
class World:
    """What Dentally would answer: the truth the machine has to discover."""
    revoked: bool = False
    failing: bool = False
    rate_until: float = 0.0
    denied: set[str] = field(default_factory=set)

    def answer(self, now: float, resource: str | None) -> Outcome:
        if self.revoked:
            return Outcome.UNAUTHORIZED
        if now < self.rate_until:
            return Outcome.RATE_LIMITED
        if self.failing:
            return Outcome.FAILED
        if resource is not None and resource in self.denied:
            return Outcome.FORBIDDEN
        return Outcome.OK

    def healthy(self, now: float) -> bool:
        return not (self.revoked or self.failing or now < self.rate_until)


@dataclass
class Sim:
    k: KeyLife
    world: World
    now: float = T0
    sent: list[tuple[float, str, State]] = field(default_factory=list)
    published: list[kl.Publish] = field(default_factory=list)
    unhealthy_at: float = T0
    """The last moment the world was not healthy."""
    triggered: float | None = None
    """When a reload, retry or new key last asked for a probe at once."""
    revocations: int = 0

    def run(self, actions: list[kl.Action]) -> None:
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            if isinstance(a, kl.Publish):
                self.published.append(a)
            elif isinstance(a, kl.Probe | kl.KeepAlive):
                queue += self.send("probe" if isinstance(a, kl.Probe) else "keepalive",
                                   None)

    def send(self, kind: str, resource: str | None) -> list[kl.Action]:
        probe = kind == "probe"
        if not self.k.may_send(self.now, probe) or self.k.rate_wait(self.now) > 0:
            return []
        self.sent.append((self.now, kind, self.k.state))
        outcome = self.world.answer(self.now, resource)
        before = self.k.state
        acts = self.k.handle(Answer(outcome, probe, resource, self.world.rate_until or None),
                             self.now)
        if self.k.state is State.REVOKED and before is not State.REVOKED:
            self.revocations += 1
        return acts

    def advance(self, to: float) -> None:
        spins = 0
        while (deadline := self.k.next_deadline(self.now)) <= to:
            spins = spins + 1 if deadline == self.now else 0
            assert spins < 50, f"a timer fires again and again at {self.now}"
            self.now = deadline
            self.check()
            self.run(self.k.handle(kl.Tick(), self.now))
            self.check()
        self.now = to
        self.check()

    def check(self) -> None:
        if not self.world.healthy(self.now):
            self.unhealthy_at = self.now
        k = self.k
        if k.state in (State.LIVE, State.IDLE_WARNED) and k.last_success is not None \
                and self.unhealthy_at < k.last_success:
            assert self.now - k.last_success <= KEEPALIVE + 1e-6, "the key idled too long"


step = st.one_of(
    st.tuples(st.just("advance"), st.floats(0, 3 * KEEPALIVE)),
    st.tuples(st.just("poll"), st.sampled_from(["patients", "invoices"])),
    st.tuples(st.just("revoke"), st.booleans()),
    st.tuples(st.just("fail"), st.booleans()),
    st.tuples(st.just("rate"), st.floats(1, 4000)),
    st.tuples(st.just("deny"), st.sampled_from(["patients", "invoices"])),
    st.tuples(st.just("allow"), st.sampled_from(["patients", "invoices"])),
    st.tuples(st.just("retry"), st.none()),
    st.tuples(st.just("newkey"), st.none()),
    st.tuples(st.just("restart"), st.none()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=60))
def test_any_sequence_keeps_the_promises(steps: list[tuple[str, object]]) -> None:
    sim = Sim(life(), World())
    keys = iter(range(1000))
    sim.run(sim.k.handle(kl.Start(f"fp{next(keys)}"), sim.now))
    for kind, arg in steps:
        if kind == "advance":
            assert isinstance(arg, float)
            sim.advance(sim.now + arg)
        elif kind == "poll":
            assert isinstance(arg, str)
            if sim.k.scope_wait(arg, sim.now) == 0:
                sim.run(sim.send("poll", arg))
        elif kind == "revoke":
            sim.world.revoked = bool(arg)
        elif kind == "fail":
            sim.world.failing = bool(arg)
        elif kind == "rate":
            assert isinstance(arg, float)
            sim.world.rate_until = sim.now + arg
        elif kind == "deny":
            sim.world.denied.add(str(arg))
        elif kind == "allow":
            sim.world.denied.discard(str(arg))
        elif kind in ("retry", "newkey"):
            sim.triggered = sim.now
            event: kl.Event = kl.RetryNow() if kind == "retry" else kl.NewKey(
                f"fp{next(keys)}")
            if kind == "newkey":
                sim.world.revoked = False
            sim.run(sim.k.handle(event, sim.now))
        elif kind == "restart":   # a new process: the machine from what Redis kept
            stored = sim.k.status()
            sim.triggered = sim.now
            sim.k = life()
            sim.run(sim.k.handle(kl.Start(stored["fingerprint"], stored), sim.now))
        sim.check()

    # 1. With a key known revoked, nothing but a probe leaves, at most once an interval
    #    unless a reload, a retry, a new key or a restart asked for one.
    for _, kind, state in sim.sent:
        if state in kl.STOPPED:
            assert kind == "probe", f"a {kind} was sent with a {state.value} key"
    # 2. One publication per incident: no identity twice, and one revocation event per
    #    revocation that a probe confirmed.
    ids = [(p.type, p.identity) for p in sim.published]
    assert len(ids) == len(set(ids)), ids
    revoked = [p for p in sim.published if p.type == "notifier.key.revoked"]
    assert len(revoked) <= sim.revocations
    # 3. (checked at every step) the key never idles past keepalive_interval while
    #    Dentally answers.


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1, 2 * PROBE), min_size=1, max_size=30))
def test_a_revoked_key_is_probed_at_most_once_an_interval(gaps: list[float]) -> None:
    sim = Sim(life(), World(revoked=True))
    sim.run(sim.k.handle(kl.Start("fp1"), sim.now))
    for gap in gaps:
        sim.advance(sim.now + gap)
    assert all(kind == "probe" for _, kind, _ in sim.sent)
    times = [at for at, _, _ in sim.sent]
    assert all(b - a >= PROBE - 1e-6 for a, b in itertools.pairwise(times))
    assert len([p for p in sim.published if p.type == "notifier.key.revoked"]) == 1
