"""Practices that share one API key share its budget and its lifecycle.

One Dentally user's key may serve several practices (sites) of the config. Dentally counts
the rate budget per user, and a key is revoked, expires or lacks a scope for all of them
at once: so the practices that use one key (grouped by the key's fingerprint, never the
key itself) share one rate budget, one lifecycle state machine and one probe. Each
practice keeps its own lease, cursors and pollers, and publishes the ``notifier.*``
events of an incident once for itself (its subscribers filter by practice).

The group's first member drives the requests the lifecycle asks for (probes,
keep-alives); every member carries out the rest (pause or resume its pollers, publish,
record the key state in its own Redis hash).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from notifier.config import PracticeConfig
from notifier.core import keylife as kl
from notifier.core.budget import Budget, Plan
from notifier.dentally.pacer import Pacer
from notifier.errors import ConfigError

log = logging.getLogger("notifier.practice")


class Member(Protocol):
    cfg: PracticeConfig

    def enqueue(self, actions: list[kl.Action]) -> None: ...


class KeyGroup:
    def __init__(self, fp: str, life: kl.KeyLife, pacer: Pacer,
                 practices: Sequence[str], plan: Plan | None = None) -> None:
        self.fp, self.life, self.pacer = fp, life, pacer
        self.plan = plan if plan is not None else Plan((), {}, 0.0, 1)
        """The effective poll intervals of every resource of the group's practices."""
        self.practices = list(practices)
        """Every configured practice using this key (members are those running now)."""
        self.members: list[Member] = []
        self._started = False

    @property
    def budget(self) -> Budget:
        return self.pacer.budget

    def join(self, member: Member, stored: dict[str, str], now: float) -> None:
        """A practice's runner starts using the key; the first one starts the lifecycle
        from what Redis kept of its key state."""
        self.members.append(member)
        if not self._started:
            self._started = True
            self.feed(kl.Start(self.fp, stored), now)
        else:
            member.enqueue([kl.Resume() if self.life.polling else kl.Pause()])

    def leave(self, member: Member, now: float) -> None:
        if member not in self.members:
            return
        leader = self.members[0] is member
        self.members.remove(member)
        if leader and self.life.probing:
            # Its probe went with it: the lifecycle must not wait for that answer.
            self.feed(kl.Answer(kl.Outcome.FAILED, probe=True, reason="prober stopped"),
                      now)

    def feed(self, event: kl.Event, now: float) -> None:
        before = self.life.state
        actions = self.life.handle(event, now)
        if not actions and self.life.state is before:
            return
        for i, member in enumerate(self.members):
            member.enqueue([a for a in actions
                            if i == 0 or not isinstance(a, kl.Probe | kl.KeepAlive)])


class KeyHub:
    """Every key group of the daemon, by fingerprint."""

    def __init__(self, practices: Sequence[PracticeConfig],
                 pacer_for: Callable[[Sequence[PracticeConfig]], Pacer],
                 plan_for: Callable[[Sequence[PracticeConfig]], Plan] | None = None) -> None:
        self.practices = list(practices)
        self._pacer_for = pacer_for
        self._plan_for = plan_for
        self._groups: dict[str, KeyGroup] = {}

    def update(self, practices: Sequence[PracticeConfig]) -> None:
        """A reload: the configured practices (groups in use keep their state)."""
        self.practices = list(practices)

    def _sharing(self, fp: str, cfg: PracticeConfig) -> list[PracticeConfig]:
        out = []
        for other in self.practices:
            if other.name == cfg.name:
                continue
            try:
                if kl.fingerprint(other.api_key_value()) == fp:
                    out.append(other)
            except ConfigError:
                continue
        return [cfg, *out]

    def group(self, fp: str, cfg: PracticeConfig) -> KeyGroup:
        group = self._groups.get(fp)
        if group is None:
            sharing = self._sharing(fp, cfg)
            if len(sharing) > 1:
                log.info("practices %s share API key %s: one budget, one lifecycle",
                         ", ".join(c.name for c in sharing), fp, extra={"practice": cfg.name})
            life = kl.KeyLife(keepalive_interval=min(c.keepalive_interval for c in sharing),
                              probe_interval=min(c.key_probe_interval for c in sharing),
                              scope_recheck_interval=min(c.scope_recheck_interval
                                                         for c in sharing))
            group = KeyGroup(fp, life, self._pacer_for(sharing), [c.name for c in sharing],
                             self._plan_for(sharing) if self._plan_for else None)
            self._groups[fp] = group
        return group

    def release(self, group: KeyGroup) -> None:
        """Forget a group nobody uses any more (the next user starts it afresh from what
        Redis kept)."""
        if not group.members and self._groups.get(group.fp) is group:
            del self._groups[group.fp]
