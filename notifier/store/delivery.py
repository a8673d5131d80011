"""Redis side of one subscriber: its consumer group, retry queue, dead letters and state.

The event stream is the durable outbox. An entry stays in the subscriber's pending list
until it is delivered (2xx) or dead-lettered, so a crash at any moment leaves it to be
sent again: delivery is at-least-once, with the stable ``webhook-id`` to deduplicate on.
Multi-key changes go in MULTI/EXEC transactions.
"""

from __future__ import annotations

import json
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from notifier.store.keys import Keys

Entry = tuple[str, dict[str, bytes]]
LOG_LENGTH = 200
DEAD_MAXLEN = 100_000


def _entries(reply: Any) -> list[Entry]:
    out: list[Entry] = []
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            if fields is None:  # pending entry deleted from the stream
                continue
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append((eid, {k.decode() if isinstance(k, bytes) else str(k): v
                              for k, v in fields.items()}))
    return out


async def groups(redis: Redis, stream: str) -> dict[str, dict[str, Any]]:
    """The stream's consumer groups by name (XINFO GROUPS); none while there is no stream."""
    try:
        infos: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return {}
    return {(i["name"].decode() if isinstance(i["name"], bytes) else str(i["name"])): i
            for i in infos}


def unacked(info: dict[str, Any]) -> int:
    """Events a group has not yet read (lag) plus those read but not acknowledged."""
    return int(info.get("lag") or 0) + int(info.get("pending") or 0)


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class DeliveryStore:
    def __init__(self, redis: Redis, keys: Keys, stream: str, name: str) -> None:
        self.redis, self.stream, self.name = redis, stream, name
        self.group = name
        self.k_retry = keys.sub(name, "retry")
        self.k_tries = keys.sub(name, "tries")
        self.k_dead = keys.sub(name, "dead")
        self.k_state = keys.sub(name, "state")
        self.k_log = keys.sub(name, "log")

    async def ensure_group(self, start: str) -> bool:
        """Create the group if missing (``$`` for ``now``, ``0`` for ``beginning``)."""
        try:
            await self.redis.xgroup_create(self.stream, self.group,
                                           id="$" if start == "now" else "0", mkstream=True)
            return True
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    async def read(self, consumer: str, *, new: bool, count: int, block_ms: int | None = None,
                   after: str = "0") -> list[Entry]:
        """New entries (``>``), or this consumer's pending ones after ``after``."""
        reply = await self.redis.xreadgroup(self.group, consumer,
                                            {self.stream: ">" if new else after},
                                            count=count, block=block_ms)
        return _entries(reply)

    async def entry(self, entry_id: str) -> dict[str, bytes] | None:
        found: Any = await self.redis.xrange(self.stream, entry_id, entry_id)
        if not found:
            return None
        return {k.decode(): v for k, v in found[0][1].items()}

    async def delivered(self, entry_id: str, now: float) -> None:
        await self.flush([entry_id], [], now)

    async def flush(self, delivered: list[str], log: list[str], now: float) -> None:
        """Acknowledge delivered entries and append attempt records, in one transaction."""
        async with self.redis.pipeline(transaction=True) as p:
            if delivered:
                p.xack(self.stream, self.group, *delivered)
                p.zrem(self.k_retry, *delivered)
                p.hdel(self.k_tries, *delivered)
                p.hset(self.k_state, "last_success_at", str(now))
                p.hdel(self.k_state, "failing_since")
            if log:
                p.lpush(self.k_log, *log)
                p.ltrim(self.k_log, 0, LOG_LENGTH - 1)
            await p.execute()

    async def skip(self, entry_id: str) -> None:
        await self.redis.xack(self.stream, self.group, entry_id)

    async def schedule_retry(self, entry_id: str, tries: int, due: float, now: float) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(self.k_tries, entry_id, str(tries))
            p.zadd(self.k_retry, {entry_id: due})
            p.hsetnx(self.k_state, "failing_since", str(now))
            await p.execute()

    async def dead_letter(self, entry_id: str, fields: dict[str, bytes], error: str,
                          tries: int, now: float) -> None:
        dead: dict[Any, Any] = {**fields, "entry": entry_id, "error": error,
                                "attempts": str(tries), "failed_at": str(now)}
        async with self.redis.pipeline(transaction=True) as p:
            p.xadd(self.k_dead, dead, maxlen=DEAD_MAXLEN, approximate=True)
            p.xack(self.stream, self.group, entry_id)
            p.zrem(self.k_retry, entry_id)
            p.hdel(self.k_tries, entry_id)
            p.hsetnx(self.k_state, "failing_since", str(now))
            await p.execute()

    async def tries(self, entry_id: str) -> int:
        raw = await self.redis.hget(self.k_tries, entry_id)
        return int(raw) if raw else 0

    async def due(self, now: float, count: int) -> list[str]:
        ids = await self.redis.zrangebyscore(self.k_retry, "-inf", now, start=0, num=count)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def next_due(self) -> float | None:
        first = await self.redis.zrange(self.k_retry, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def scheduled(self, entry_id: str) -> bool:
        return await self.redis.zscore(self.k_retry, entry_id) is not None

    async def log_attempt(self, **record: Any) -> None:
        async with self.redis.pipeline(transaction=False) as p:
            p.lpush(self.k_log, json.dumps(record))
            p.ltrim(self.k_log, 0, LOG_LENGTH - 1)
            await p.execute()

    async def state(self) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.k_state))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def set_state(self, **fields: str) -> None:
        mapping: dict[Any, Any] = fields
        await self.redis.hset(self.k_state, mapping=mapping)

    async def clear_state(self, *fields: str) -> None:
        await self.redis.hdel(self.k_state, *fields)
