"""The campaign's faults: each a small adapter with ``start`` and ``stop``, switchable by name.

A fault is available only when the parts it drives support it (a sandbox quirk that another
change adds is looked up by name), so the schedule enables what exists and picks up the
rest as it lands. Faults of one ``group`` never overlap (two settings of one quirk would
undo each other); faults of different groups do, and that is the point.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.campaign.run import Campaign

Action = Callable[["Campaign", random.Random], Awaitable[str]]
Undo = Callable[["Campaign"], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    kind: str
    group: str
    start: Action
    stop: Undo
    duration: tuple[float, float]
    weight: float = 1.0
    needs_quirk: str | None = None
    """A sandbox quirk this fault needs (added by another change): off until it exists."""

    def available(self, quirks: set[str]) -> bool:
        return self.needs_quirk is None or self.needs_quirk in quirks


async def _noop(c: Campaign) -> None:
    return None


def _quirk(kind: str, name: str, value: Callable[[Campaign, random.Random], object],
           duration: tuple[float, float], needs: str | None = None,
           group: str | None = None, weight: float = 1.0) -> Fault:
    async def start(c: Campaign, rng: random.Random) -> str:
        v = value(c, rng)
        await c.control.quirks(**{name: v})
        return f"{name}={v}"

    async def stop(c: Campaign) -> None:
        await c.control.quirks(**{name: c.baseline_quirks[name]})

    return Fault(kind, group or f"quirk.{name}", start, stop, duration, weight, needs)


def _between_pages(c: Campaign, r: random.Random) -> list[dict[str, object]]:
    """Rows the client has just read deleted, and new ones created, before its next page
    (none created in a table at the workload's row bound)."""
    hooks: list[dict[str, object]] = []
    for _ in range(r.randint(1, 4)):
        resource, after_page = r.choice(c.resources), r.randint(1, 3)
        delete, create = r.randint(0, 2), r.randint(0, 2)
        hooks.append({"resource": resource, "after_page": after_page, "delete": delete,
                      "create": 0 if c.workload.at_bound(resource) else create})
    return hooks


def _bad_node(c: Campaign, r: random.Random) -> list[int]:
    ahead = r.randint(120_000, 3_600_000)
    return [ahead if r.random() < 1 / 2 else 0 for _ in range(r.randint(12, 40))]


def _rate(kind: str, status: int) -> Fault:
    """The key's whole budget nearly spent by others: the server answers ``status``."""
    async def start(c: Campaign, rng: random.Random) -> str:
        limit = rng.randint(3, 12)
        await c.control.quirks(rate_limit=limit, rate_limit_status=status)
        return f"rate_limit={limit} -> {status}"

    async def stop(c: Campaign) -> None:
        await c.control.quirks(rate_limit=c.baseline_quirks["rate_limit"],
                               rate_limit_status=c.baseline_quirks["rate_limit_status"])

    return Fault(kind, "quirk.rate", start, stop, (1.0, 3.0))


async def _revoke(c: Campaign, rng: random.Random) -> str:
    await c.control.key(c.token, "revoke")
    c.excuse_start("revoked")
    return "key revoked"


async def _restore(c: Campaign) -> None:
    await c.control.key(c.token, "restore")
    c.excuse_end("revoked")


async def _fail_next(c: Campaign, rng: random.Random) -> str:
    statuses = [rng.choice([500, 502, 503, 504]) for _ in range(rng.randint(1, 4))]
    await c.control.quirks(fail_next=statuses)
    return f"fail_next={statuses}"


async def _lost_reply(c: Campaign, rng: random.Random) -> str:
    return "cut" if await c.redis_lost_reply(replay=False) else "no script call came"


async def _replay(c: Campaign, rng: random.Random) -> str:
    return "sent twice" if await c.redis_lost_reply(replay=True) else "no script call came"


async def _redis_down(c: Campaign, rng: random.Random) -> str:
    c.proxy.down = True
    return "every connection cut, new ones refused"


async def _redis_back(c: Campaign) -> None:
    c.proxy.down = False


async def _kill9(c: Campaign, rng: random.Random) -> str:
    await c.daemon_kill9()
    return "kill -9"


async def _sigterm(c: Campaign, rng: random.Random) -> str:
    took = await c.daemon_sigterm()
    return f"SIGTERM, stopped in {took:.1f}s"


async def _restart(c: Campaign) -> None:
    await c.daemon_start()


async def _sighup(c: Campaign, rng: random.Random) -> str:
    return await c.daemon_sighup(rng)


async def _workload(c: Campaign, rng: random.Random, flag: str) -> str:
    setattr(c.workload, flag, True)
    return flag


def _workload_fault(kind: str, flag: str, duration: tuple[float, float]) -> Fault:
    async def start(c: Campaign, rng: random.Random) -> str:
        return await _workload(c, rng, flag)

    async def stop(c: Campaign) -> None:
        setattr(c.workload, flag, False)

    return Fault(kind, f"workload.{flag}", start, stop, duration)


def _subscriber(kind: str, change: Callable[[Campaign, random.Random], dict[str, object]],
                duration: tuple[float, float]) -> Fault:
    async def start(c: Campaign, rng: random.Random) -> str:
        rec = rng.choice(c.receivers)
        values = change(c, rng)
        for k, v in values.items():
            setattr(rec.mode, k, v)
        c.sub_faulted[kind] = rec
        return f"{rec.name}: {values}"

    async def stop(c: Campaign) -> None:
        rec = c.sub_faulted.pop(kind, None)
        if rec is not None:
            await c.heal_receiver(rec)

    return Fault(kind, f"subscriber.{kind}", start, stop, duration)


def all_faults() -> list[Fault]:
    return [
        # Dentally
        _quirk("dentally.unstable", "unstable_rate", lambda c, r: round(r.uniform(0.2, 0.6), 2),
               (2, 6)),
        _workload_fault("dentally.shared_updated_at", "shared", (2, 6)),
        _workload_fault("dentally.churn", "churn", (1, 4)),
        _quirk("dentally.writes_between_pages", "between_pages", _between_pages, (1, 3),
               needs="between_pages"),
        _quirk("dentally.503", "error_rate", lambda c, r: round(r.uniform(0.1, 0.5), 2),
               (1, 4)),
        Fault("dentally.5xx_burst", "quirk.fail_next", _fail_next, _noop, (0.5, 1.5)),
        _quirk("dentally.timeout", "latency", lambda c, r: c.timeout + 0.5, (1, 3)),
        _quirk("dentally.slow", "latency", lambda c, r: round(r.uniform(0.05, 0.3), 2),
               (1, 4), group="quirk.latency"),
        # Deeper than the workload's busiest instant (a batch edit of 20 rows, shared
        # stamps): a window of rows sharing one second cannot be split, and no real depth
        # limit is that shallow; deeper windows must be split.
        _quirk("dentally.413", "deep_page_limit", lambda c, r: c.per_page * r.randint(4, 8),
               (2, 6)),
        _quirk("dentally.date_blip", "date_offsets",
               lambda c, r: [r.choice([-1, 1, 1]) * r.randint(30_000, 3_600_000)
                             for _ in range(r.randint(1, 3))], (0.5, 2),
               needs="date_offsets"),
        # One node of two behind the load balancer with its clock set ahead: about every
        # other response, for the next dozen or more, carries a `Date` minutes to an hour ahead
        # (a cursor that believed one of them would skip every edit until the next sweep).
        _quirk("dentally.bad_clock_node", "date_offsets", _bad_node, (1, 4),
               needs="date_offsets"),
        _quirk("dentally.future_stamps", "write_skew_ms",
               lambda c, r: r.randint(500, 5_000), (1, 4), needs="write_skew_ms"),
        _quirk("dentally.429_burst", "burst_limit", lambda c, r: r.randint(2, 6), (1, 3),
               needs="burst_limit"),
        _rate("dentally.403_hourly_cap", 403),
        Fault("dentally.key_revoked", "key", _revoke, _restore, (1.5, 4)),
        # Redis
        Fault("redis.lost_reply", "redis", _lost_reply, _noop, (0.2, 1)),
        Fault("redis.replayed_command", "redis", _replay, _noop, (0.2, 1)),
        Fault("redis.down", "redis", _redis_down, _redis_back, (0.5, 3)),
        # The daemon
        Fault("daemon.kill9", "daemon", _kill9, _restart, (0.0, 1.0), weight=1.5),
        Fault("daemon.sigterm", "daemon", _sigterm, _restart, (0.0, 1.0)),
        Fault("daemon.sighup", "daemon", _sighup, _noop, (0.5, 2.0)),
        # Subscribers
        _subscriber("subscriber.failing", lambda c, r: {"fail_n": r.randint(1, 3)}, (2, 6)),
        _subscriber("subscriber.gone_410", lambda c, r: {"gone": True}, (0.5, 2)),
        _subscriber("subscriber.hanging", lambda c, r: {"hang": c.sub_timeout * 1.5},
                    (1, 4)),
        _subscriber("subscriber.trickling",
                    lambda c, r: {"trickle": c.sub_timeout * r.choice([0.3, 2.0])}, (1, 4)),
        _subscriber("subscriber.slow", lambda c, r: {"slow": c.sub_timeout * 0.4}, (2, 6)),
    ]


KINDS = [f.kind for f in all_faults()]
