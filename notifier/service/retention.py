"""Trimming the event stream by age, never past what an enabled subscriber still needs.

``XADD ... MAXLEN`` trims entries a consumer group never read; here the cut-off is the
older of "``retention`` ago" and, for every enabled subscriber's group, its oldest pending
entry and its last-delivered id (entries after it are not read yet).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from notifier.core.text import plural
from notifier.store.delivery import groups as consumer_groups

log = logging.getLogger("notifier.retention")


def parse_id(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def cutoff(now: float, retention: float, needed: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The MINID to trim to: by age, held back by the oldest id still needed."""
    age = (int((now - retention) * 1000), 0)
    return min([age, *needed])


async def needed_ids(redis: Redis, stream: str, groups: set[str]) -> list[tuple[int, int]]:
    """For each of ``groups`` (enabled subscribers), the oldest id it still needs."""
    out = []
    for name, info in (await consumer_groups(redis, stream)).items():
        if name not in groups:
            continue
        ms, seq = parse_id(info["last-delivered-id"])
        out.append((ms, seq + 1))  # everything after what the group has read
        if info["pending"]:
            summary: Any = await redis.xpending(stream, name)
            if summary and summary.get("min"):
                out.append(parse_id(summary["min"]))
    return out


async def trim(redis: Redis, stream: str, groups: set[str], retention: float,
               now: float) -> int:
    """Trim once; returns how many entries went."""
    ms, seq = cutoff(now, retention, await needed_ids(redis, stream, groups))
    if ms <= 0:
        return 0
    removed: Any = await redis.xtrim(stream, minid=f"{ms}-{seq}", approximate=False)
    if removed:
        log.info("trimmed %s older than %d-%d", plural(int(removed), "event"), ms, seq)
    return int(removed)
