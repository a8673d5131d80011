"""Redis side of one subscriber: its consumer group, retry queue, dead letters and state.

The event stream is the durable outbox. An entry stays in the subscriber's pending list
until it is delivered (2xx), dead-lettered, or found trimmed (lost), so a crash at any
moment leaves it to be sent again: delivery is at-least-once, with the stable
``webhook-id`` to deduplicate on.

The pending list is also what makes each step idempotent under redis-py's retry of a
command whose reply was lost: the scripts that dead-letter an entry, schedule its retry or
count it as lost first check that the entry is still pending in the group, and a step that
already applied has acknowledged it. (The same check lets ``redeliver`` take an event over:
once it has acknowledged it, no retry of it is scheduled any more.)

This module owns the field names of the subscriber's state hash: the rest of the code
reads and writes it through ``SubscriberState`` and the methods below.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from notifier.store.keys import Keys

Entry = tuple[str, dict[str, bytes]]
"""A stream entry: its id and fields. Empty fields: it was trimmed from the stream while
pending (redis-py 8 returns an empty map for it, older versions None)."""
LOG_LENGTH = 200
DEAD_MAXLEN = 100_000

# The state hash's fields (<prefix>:sub:<name>:state).
F_DISABLED = "disabled"
F_DISABLED_AT = "disabled_at"
F_DISABLED_REASON = "disabled_reason"
F_ENABLED_AT = "enabled_at"
F_FAILING_SINCE = "failing_since"
F_LAST_SUCCESS_AT = "last_success_at"
F_GROUP_CREATED_AT = "group_created_at"
F_GROUP_LOST_AT = "group_lost_at"
F_GROUP_LOST_COUNT = "group_lost_count"
F_LOST_COUNT = "lost_count"
F_LOST_AT = "lost_at"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclass(frozen=True)
class SubscriberState:
    disabled: bool = False
    disabled_at: float | None = None
    disabled_reason: str | None = None
    enabled_at: float | None = None
    failing_since: float | None = None
    last_success_at: float | None = None
    group_created_at: float | None = None
    group_lost_at: float | None = None
    group_lost_count: int = 0
    lost_count: int = 0
    lost_at: float | None = None

    @classmethod
    def parse(cls, raw: dict[str, str]) -> SubscriberState:
        return cls(
            disabled=raw.get(F_DISABLED) == "1",
            disabled_at=_float(raw.get(F_DISABLED_AT)),
            disabled_reason=raw.get(F_DISABLED_REASON) or None,
            enabled_at=_float(raw.get(F_ENABLED_AT)),
            failing_since=_float(raw.get(F_FAILING_SINCE)),
            last_success_at=_float(raw.get(F_LAST_SUCCESS_AT)),
            group_created_at=_float(raw.get(F_GROUP_CREATED_AT)),
            group_lost_at=_float(raw.get(F_GROUP_LOST_AT)),
            group_lost_count=int(raw.get(F_GROUP_LOST_COUNT) or 0),
            lost_count=int(raw.get(F_LOST_COUNT) or 0),
            lost_at=_float(raw.get(F_LOST_AT)),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[Entry]:
    out: list[Entry] = []
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            out.append((_text(entry_id), {_text(k): v for k, v in (fields or {}).items()}))
    return out


async def groups(redis: Redis, stream: str) -> dict[str, dict[str, Any]]:
    """The stream's consumer groups by name (XINFO GROUPS); none while there is no stream."""
    try:
        infos: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return {}
    return {_text(i["name"]): i for i in infos}


def unacked(info: dict[str, Any]) -> int:
    """Events a group has not yet read (lag) plus those read but not acknowledged."""
    return int(info.get("lag") or 0) + int(info.get("pending") or 0)


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


# Each script acts only on an entry still pending in the group (see the module's doc).
# KEYS: stream, retry, tries, state, dead; ARGV[1] group, ARGV[2] entry id.
_PENDING = """
local function pending(id)
  return #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1) > 0
end
"""

DEAD_LETTER = _PENDING + """
if not pending(ARGV[2]) then return 0 end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HSETNX', KEYS[4], 'failing_since', ARGV[3])
return 1
"""

SCHEDULE_RETRY = _PENDING + """
if not pending(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HSETNX', KEYS[4], 'failing_since', ARGV[5])
return 1
"""

LOST = _PENDING + """
local n = 0
for i = 3, #ARGV do
  if pending(ARGV[i]) then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    n = n + 1
  end
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
end
if n > 0 then
  redis.call('HINCRBY', KEYS[4], 'lost_count', n)
  redis.call('HSET', KEYS[4], 'lost_at', ARGV[2])
end
return n
"""


class DeliveryStore:
    def __init__(self, redis: Redis, keys: Keys, stream: str, name: str) -> None:
        self.redis, self.stream, self.name = redis, stream, name
        self.group = name
        self.k_retry = keys.sub(name, "retry")
        self.k_tries = keys.sub(name, "tries")
        self.k_dead = keys.sub(name, "dead")
        self.k_state = keys.sub(name, "state")
        self.k_log = keys.sub(name, "log")
        self._dead_letter = redis.register_script(DEAD_LETTER)
        self._schedule = redis.register_script(SCHEDULE_RETRY)
        self._lost = redis.register_script(LOST)

    @property
    def _keys(self) -> list[str]:
        return [self.stream, self.k_retry, self.k_tries, self.k_state, self.k_dead]

    # -- the consumer group --------------------------------------------------------------
    async def ensure_group(self, start: str, now: float, *, existed: bool = False
                           ) -> Literal["exists", "created", "recreated"]:
        """Make sure the group exists. A subscriber that never had one starts at ``start``
        (``now``: new events only; ``beginning``: the retained stream); a group that
        existed before (``existed``, or as this subscriber's state remembers) and is gone
        is recreated from the oldest retained entry, so nothing still in the stream is
        skipped: ``recreated``, for the caller to report."""
        # Deployments from before the marker: any trace of deliveries means it existed.
        had = existed or (await self.state()).group_created_at is not None \
            or bool(await self.redis.exists(self.k_log, self.k_retry, self.k_dead))
        begin = "0" if had or start == "beginning" else "$"
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=begin, mkstream=True)
            result: Literal["exists", "created", "recreated"] = \
                "recreated" if had else "created"
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            result = "exists"
        if not had:
            await self.redis.hsetnx(self.k_state, F_GROUP_CREATED_AT, str(now))
        return result

    async def group_lost(self, now: float) -> int:
        """Record a lost group; returns how many times it was lost."""
        async with self.redis.pipeline(transaction=True) as p:
            p.hincrby(self.k_state, F_GROUP_LOST_COUNT, 1)
            p.hset(self.k_state, mapping={F_GROUP_LOST_AT: str(now),
                                          F_GROUP_CREATED_AT: str(now)})
            count, _ = await p.execute()
        return int(count)

    async def read(self, consumer: str, *, new: bool, count: int, block_ms: int | None = None,
                   after: str = "0") -> list[Entry]:
        """New entries (``>``), or this consumer's pending ones after ``after``."""
        reply = await self.redis.xreadgroup(self.group, consumer,
                                            {self.stream: ">" if new else after},
                                            count=count, block=block_ms)
        return _entries(reply)

    async def entry(self, entry_id: str) -> dict[str, bytes]:
        """The entry's fields; empty if it is no longer in the stream."""
        found: Any = await self.redis.xrange(self.stream, entry_id, entry_id)
        if not found:
            return {}
        return {_text(k): v for k, v in found[0][1].items()}

    # -- outcomes ---------------------------------------------------------------------
    async def flush(self, delivered: list[str], log: list[str], now: float) -> None:
        """Acknowledge delivered entries and append attempt records, in one transaction
        (a retry of it applies nothing new)."""
        async with self.redis.pipeline(transaction=True) as p:
            if delivered:
                p.xack(self.stream, self.group, *delivered)
                p.zrem(self.k_retry, *delivered)
                p.hdel(self.k_tries, *delivered)
                p.hset(self.k_state, F_LAST_SUCCESS_AT, str(now))
                p.hdel(self.k_state, F_FAILING_SINCE)
            if log:
                p.lpush(self.k_log, *log)
                p.ltrim(self.k_log, 0, LOG_LENGTH - 1)
            await p.execute()

    async def skip(self, entry_id: str) -> None:
        await self.redis.xack(self.stream, self.group, entry_id)

    async def schedule_retry(self, entry_id: str, tries: int, due: float, now: float) -> bool:
        """Schedule the next attempt; False if the entry is no longer pending (delivered,
        dead-lettered, or taken over by ``redeliver``): then nothing is scheduled."""
        done = await self._schedule(keys=self._keys,
                                    args=[self.group, entry_id, tries, repr(due), repr(now)])
        return bool(done)

    async def dead_letter(self, entry_id: str, fields: dict[str, bytes], error: str,
                          tries: int, now: float) -> bool:
        """Move the entry to the dead letters, once: False if it was no longer pending
        (this very call already applied, or it was taken over)."""
        dead: dict[str, Any] = {**fields, "entry": entry_id, "error": error,
                                "attempts": str(tries), "failed_at": str(now)}
        args: list[Any] = [self.group, entry_id, repr(now), DEAD_MAXLEN]
        for k, v in dead.items():
            args += [k, v]
        return bool(await self._dead_letter(keys=self._keys, args=args))

    async def lost(self, entry_ids: Sequence[str], now: float) -> int:
        """Acknowledge entries trimmed from the stream before delivery and count them as
        lost; returns how many were still pending (counted once, whatever the retries)."""
        if not entry_ids:
            return 0
        return int(await self._lost(keys=self._keys,
                                    args=[self.group, repr(now), *entry_ids]))

    async def take_over(self, entry_id: str) -> float | None:
        """``redeliver`` takes an event over: its scheduled retry, if any, is cancelled;
        returns when that retry was due (to put it back if the redelivery fails)."""
        async with self.redis.pipeline(transaction=True) as p:
            p.zscore(self.k_retry, entry_id)
            p.zrem(self.k_retry, entry_id)
            due, _ = await p.execute()
        return None if due is None else float(due)

    async def forget_dead(self, dead_entry: str) -> None:
        """A dead letter was redelivered: it leaves the dead letters."""
        await self.redis.xdel(self.k_dead, dead_entry)

    async def redelivered(self, entry_id: str) -> None:
        """A redelivery succeeded: the event needs no further attempt."""
        async with self.redis.pipeline(transaction=True) as p:
            p.xack(self.stream, self.group, entry_id)
            p.zrem(self.k_retry, entry_id)
            p.hdel(self.k_tries, entry_id)
            await p.execute()

    # -- retries ----------------------------------------------------------------------
    async def tries(self, entry_id: str) -> int:
        raw = await self.redis.hget(self.k_tries, entry_id)
        return int(raw) if raw else 0

    async def due(self, now: float, count: int) -> list[str]:
        ids = await self.redis.zrangebyscore(self.k_retry, "-inf", now, start=0, num=count)
        return [_text(i) for i in ids]

    async def next_due(self) -> float | None:
        first = await self.redis.zrange(self.k_retry, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def scheduled(self, entry_id: str) -> bool:
        return await self.redis.zscore(self.k_retry, entry_id) is not None

    async def retries_pending(self) -> int:
        return int(await self.redis.zcard(self.k_retry))

    async def dead_letters(self) -> int:
        return int(await self.redis.xlen(self.k_dead))

    async def log_attempt(self, **record: Any) -> None:
        async with self.redis.pipeline(transaction=False) as p:
            p.lpush(self.k_log, json.dumps(record))
            p.ltrim(self.k_log, 0, LOG_LENGTH - 1)
            await p.execute()

    async def last_attempt(self) -> dict[str, Any] | None:
        last: Any = await self.redis.lrange(self.k_log, 0, 0)
        return cast(dict[str, Any], json.loads(last[0])) if last else None

    # -- state ------------------------------------------------------------------------
    async def state(self) -> SubscriberState:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.k_state))
        return SubscriberState.parse({k.decode(): v.decode() for k, v in raw.items()})

    async def is_disabled(self) -> bool:
        return await self.redis.hget(self.k_state, F_DISABLED) == b"1"

    async def disable(self, reason: str, now: float) -> bool:
        """Disable the subscriber; False if it already was."""
        async with self.redis.pipeline(transaction=True) as p:
            p.hget(self.k_state, F_DISABLED)
            p.hset(self.k_state, mapping={F_DISABLED: "1", F_DISABLED_AT: str(now),
                                          F_DISABLED_REASON: reason})
            was, _ = await p.execute()
        return bool(was != b"1")

    async def enable(self, now: float) -> bool:
        """Turn the subscriber back on (its failing streak starts afresh); False if it was
        not disabled."""
        async with self.redis.pipeline(transaction=True) as p:
            p.hget(self.k_state, F_DISABLED)
            p.hdel(self.k_state, F_DISABLED, F_FAILING_SINCE)
            p.hset(self.k_state, F_ENABLED_AT, str(now))
            was, _, _ = await p.execute()
        return bool(was == b"1")
