"""Key groups: several practices on one key drive one lifecycle (no IO involved)."""

from __future__ import annotations

from notifier.config import PracticeConfig
from notifier.core import keylife as kl
from notifier.core.budget import Budget
from notifier.service.keygroup import KeyHub
from notifier.service.pacing import effective_interval, pacer_for, plan_for

T0 = 1_800_000_000.0


class FakeRunner:
    """A member that only records what the group asks of it."""

    def __init__(self, cfg: PracticeConfig) -> None:
        self.cfg = cfg
        self.got: list[str] = []

    def enqueue(self, actions: list[kl.Action]) -> None:
        self.got += [type(a).__name__ if not isinstance(a, kl.Publish) else a.type
                     for a in actions]


def cfg(name: str, key: str, share: int = 1800) -> PracticeConfig:
    return PracticeConfig(name=name, api_key=key, resources=["patients"],
                          max_requests_per_hour=share)


def test_practices_with_one_key_get_one_group_and_the_smallest_share() -> None:
    cfgs = [cfg("a", "k1", 1800), cfg("b", "k1", 900), cfg("c", "k2")]
    hub = KeyHub(cfgs, pacer_for, plan_for)
    fp1, fp2 = kl.fingerprint("k1"), kl.fingerprint("k2")
    ga, gb, gc = hub.group(fp1, cfgs[0]), hub.group(fp1, cfgs[1]), hub.group(fp2, cfgs[2])
    assert ga is gb and ga is not gc
    assert isinstance(ga.budget, Budget) and ga.budget.share == 900
    assert ga.practices == ["a", "b"] and gc.practices == ["c"]
    assert ga.pacer is gb.pacer   # one pace, one queue for every request with the key


def test_a_groups_poll_plan_counts_every_practice_on_the_key() -> None:
    one = PracticeConfig(name="a", api_key="k1", resources=["patients", "appointments"],
                         poll_interval=10, max_requests_per_hour=720)
    two = one.model_copy(update={"name": "b"})
    hub = KeyHub([one, two], pacer_for, plan_for)
    group = hub.group(kl.fingerprint("k1"), one)
    # 4 polls every 10 s need 1,440 an hour; the key's share is 720: every 20 s instead.
    assert group.plan.need_per_hour == 1440
    assert effective_interval(group.plan, one, "patients") == 20
    assert effective_interval(group.plan, two, "appointments") == 20
    assert "a/patients, a/appointments, b/patients, b/appointments every 10 s" in \
        group.plan.message()


def test_one_probe_for_the_group_and_every_member_pauses_resumes_and_publishes() -> None:
    cfgs = [cfg("a", "k1"), cfg("b", "k1")]
    hub = KeyHub(cfgs, pacer_for, plan_for)
    group = hub.group(kl.fingerprint("k1"), cfgs[0])
    a, b = FakeRunner(cfgs[0]), FakeRunner(cfgs[1])
    group.join(a, {}, T0)
    group.join(b, {}, T0)
    assert a.got == ["Pause", "Probe", "Persist"] and b.got == ["Pause"]
    group.feed(kl.Answer(kl.Outcome.OK, probe=True), T0)
    assert a.got[-2:] == ["Resume", "Persist"] and b.got[-2:] == ["Resume", "Persist"]
    group.feed(kl.Answer(kl.Outcome.UNAUTHORIZED, resource="patients"), T0 + 1)
    group.feed(kl.Answer(kl.Outcome.UNAUTHORIZED, resource="patients"), T0 + 1)
    assert a.got.count("Probe") == 2 and b.got.count("Probe") == 0
    group.feed(kl.Answer(kl.Outcome.UNAUTHORIZED, probe=True), T0 + 2)
    assert a.got.count("notifier.key.revoked") == 1 == b.got.count("notifier.key.revoked")


def test_a_leader_that_leaves_mid_probe_hands_the_probe_on() -> None:
    cfgs = [cfg("a", "k1"), cfg("b", "k1")]
    hub = KeyHub(cfgs, pacer_for, plan_for)
    group = hub.group(kl.fingerprint("k1"), cfgs[0])
    a, b = FakeRunner(cfgs[0]), FakeRunner(cfgs[1])
    group.join(a, {}, T0)
    group.join(b, {}, T0)
    assert group.life.probing
    group.leave(a, T0 + 1)            # a's probe was cancelled with it
    assert not group.life.probing
    group.feed(kl.Tick(), group.life.next_deadline(T0 + 1))
    assert "Probe" in b.got
    group.leave(b, T0 + 10)
    hub.release(group)
    assert hub.group(kl.fingerprint("k1"), cfgs[1]) is not group   # afresh from Redis
