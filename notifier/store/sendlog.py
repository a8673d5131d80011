"""Our own Dentally requests of the last rate window, kept in Redis, so that the share
(``core.budget``, rule 1) holds across restarts: a daemon restarted within the window
starts from what it already spent, not from zero.

Each request is recorded before it leaves (so a ``kill -9`` right after cannot lose it),
in the sorted set of every practice that uses the key (``Keys.sent``), trimmed to the
window and expiring with it. Loading takes the union over those practices: a practice
keeps its count when its key is rotated, and practices that share a key share it.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from notifier.core.budget import CAP_MARGIN
from notifier.store.keys import Keys

log = logging.getLogger("notifier.budget")


class SendLog:
    def __init__(self, redis: Redis, keys: Keys, practices: Sequence[str],
                 window: float) -> None:
        self.redis = redis
        self.names = [keys.sent(p) for p in practices]
        self.window = window
        self._tag = uuid.uuid4().hex[:8]   # members stay unique across processes
        self._seq = itertools.count()
        self._failing = False

    def _horizon(self, now: float) -> float:
        return now - self.window - CAP_MARGIN

    async def load(self, now: float) -> list[float]:
        """Send times of the window before ``now`` (raises RedisError)."""
        seen: dict[bytes, float] = {}
        for name in self.names:
            rows = cast(list[tuple[bytes, float]], await self.redis.zrangebyscore(
                name, f"({self._horizon(now)!r}", "+inf", withscores=True))
            seen.update(rows)
        return sorted(seen.values())

    async def record(self, sent_at: float) -> None:
        """One request about to leave. A Redis error is logged, not raised: the count in
        memory still holds for this process."""
        member = f"{sent_at!r}:{self._tag}:{next(self._seq)}"
        ttl = math.ceil((self.window + CAP_MARGIN) * 1000) + 1000
        pipe: Any = self.redis.pipeline(transaction=False)
        for name in self.names:
            pipe.zadd(name, {member: sent_at})
            pipe.zremrangebyscore(name, "-inf", self._horizon(sent_at))
            pipe.pexpire(name, ttl)
        try:
            await pipe.execute()
        except RedisError as exc:
            if not self._failing:
                log.warning("could not record a request in Redis (%s): the share holds "
                            "in memory, but a restart now would forget it", exc)
            self._failing = True
        else:
            self._failing = False
