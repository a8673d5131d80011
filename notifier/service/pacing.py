"""A practice's settings turned into its rate budget, its pacer and its poll plan.

Thin: the rules live in :mod:`notifier.core.budget`. Each function takes the practices
that share one API key (today each practice has its own key's budget; several practices
with one key pass them all, and share the result).
"""

from __future__ import annotations

from collections.abc import Sequence

from notifier.config import PracticeConfig
from notifier.core import budget, resources
from notifier.dentally.pacer import Pacer


def budget_for(cfgs: PracticeConfig | Sequence[PracticeConfig]) -> budget.Budget:
    """The key's budget: the smallest share and pace any of its practices allows."""
    group = [cfgs] if isinstance(cfgs, PracticeConfig) else list(cfgs)
    first = min(group, key=lambda c: c.max_requests_per_hour * c.rate_window)
    return budget.sized(first.max_requests_per_hour, first.rate_window,
                        min(c.max_requests_per_second for c in group))


def pacer_for(cfgs: PracticeConfig | Sequence[PracticeConfig]) -> Pacer:
    group = [cfgs] if isinstance(cfgs, PracticeConfig) else list(cfgs)
    return Pacer(budget_for(group), extra={"practice": ",".join(c.name for c in group)})


def _label(cfg: PracticeConfig, resource: str, several: bool) -> str:
    return f"{cfg.name}/{resource}" if several else resource


def plan_for(cfgs: PracticeConfig | Sequence[PracticeConfig]) -> budget.Plan:
    """The effective poll interval of every resource of the key's practices (named
    ``resource``, or ``practice/resource`` when several practices share the key)."""
    group = [cfgs] if isinstance(cfgs, PracticeConfig) else list(cfgs)
    several = len(group) > 1
    shortest = min(r.interval for r in resources.RESOURCES.values())
    polls = [budget.Poll(_label(c, name, several), c.interval(name),
                         resources.get(name).interval / shortest)
             for c in group for name in c.resources]
    share = min(c.max_requests_per_hour for c in group)
    return budget.plan(polls, share, min(c.max_requests_per_second for c in group))


def effective_interval(plan: budget.Plan, cfg: PracticeConfig, resource: str) -> float:
    several = any("/" in p.name for p in plan.polls)
    return plan.effective[_label(cfg, resource, several)]
