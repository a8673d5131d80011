"""The Redis adapter: progress, snapshots and the atomic commit of a page.

One Lua script applies a page: it writes the snapshots (and the dictionary they need, if
not stored yet), appends the events to the stream and stores the new progress (cursor,
pending windows) together, so a crash at any instant leaves either all of a page or none
of it: a snapshot never references a dictionary that is not stored. Each call carries a
fresh token that the script stores with the progress: redis-py retries a command whose
reply was lost, and the retry then finds its own token and applies nothing twice.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from redis.asyncio import Redis

from notifier.core.cursor import Progress, Window
from notifier.core.shaping import Shape, Skip, shape
from notifier.errors import LeaseLost, StoreError
from notifier.events import Event
from notifier.store.codec import Codec
from notifier.store.keys import Keys

# The atomic commit of one page. It validates before it writes anything (Redis scripts do
# not roll back): a replayed call (same token), a writer that lost the practice's lease or
# a dictionary other than the stored one changes nothing.
#
#   KEYS[1]  cursor hash      progress, status fields and the token of the last commit
#   KEYS[2]  snapshots hash   record id -> snapshot blob
#   KEYS[3]  event stream
#   KEYS[4]  dictionary       the compression dictionary of the snapshots (string)
#   KEYS[5]  lease            optional: the practice's lease key
#
#   ARGV, in order (every list is its length followed by its items):
#     token                         fresh per call; stored in KEYS[1]
#     zdict                         '' or the dictionary the snapshots need; written (SET)
#                                   in this same step when not stored yet
#     n, (id, blob) x n             snapshots to write
#     n, id x n                     snapshots to delete
#     n, m, name x m, (value x m) x n
#                                   n events: the m stream entry field names (the same
#                                   for every event, from stream_fields), then each
#                                   event's m values in that order
#     n, (field, value) x n         cursor hash fields (progress and status)
#     fence                         only with KEYS[5]: the writer's fencing token; a writer
#                                   that no longer holds the lease commits nothing
#
#   Returns 1 applied, 0 already applied by this token, -1 the lease is not the writer's,
#   -2 another dictionary is stored.
COMMIT = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return 0 end
if KEYS[5] and redis.call('GET', KEYS[5]) ~= ARGV[#ARGV] then return -1 end
local zdict = ARGV[2]
if zdict ~= '' then
  local stored = redis.call('GET', KEYS[4])
  if stored and stored ~= zdict then return -2 end
  if not stored then redis.call('SET', KEYS[4], zdict) end
end
local i = 3
local n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  local args = {}
  for j = 1, 2 * n do args[j] = ARGV[i + j - 1] end
  redis.call('HSET', KEYS[2], unpack(args))
  i = i + 2 * n
end
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  local args = {}
  for j = 1, n do args[j] = ARGV[i + j - 1] end
  redis.call('HDEL', KEYS[2], unpack(args))
  i = i + n
end
n = tonumber(ARGV[i]); i = i + 1
local m = tonumber(ARGV[i]); i = i + 1
local fields = {}
for j = 1, m do fields[2 * j - 1] = ARGV[i + j - 1] end
i = i + m
for e = 1, n do
  for j = 1, m do fields[2 * j] = ARGV[i + j - 1] end
  redis.call('XADD', KEYS[3], '*', unpack(fields))
  i = i + m
end
n = tonumber(ARGV[i]); i = i + 1
local args = {'token', ARGV[1]}
for j = 1, 2 * n do args[#args + 1] = ARGV[i + j - 1] end
redis.call('HSET', KEYS[1], unpack(args))
return 1
"""


def stream_args(event: Event) -> list[str | bytes]:
    """An event's stream entry fields as script arguments: their count, then name, value
    pairs. Every script that appends to the stream takes them in this form, so the entry's
    fields are defined once (:meth:`Event.stream_fields`)."""
    fields = event.stream_fields()
    out: list[str | bytes] = [str(len(fields))]
    for name, value in fields.items():
        out += [name, value]
    return out


def stream_table(events: Sequence[Event]) -> list[str | bytes]:
    """Several events' stream entry fields as COMMIT takes them: the number of events and
    of fields, the field names once, then each event's values in that order."""
    names = list(Event.FIELDS)
    out: list[str | bytes] = [str(len(events)), str(len(names)), *names]
    for e in events:
        fields = e.stream_fields()
        out += [fields[name] for name in names]
    return out


class DictionaryConflict(StoreError):
    """Another compression dictionary is stored than the one a commit's snapshots need."""


def progress_fields(p: Progress) -> dict[str, str]:
    return {
        "cursor": "" if p.cursor is None else str(p.cursor),
        "windows": json.dumps([[w.lo, w.hi] for w in p.windows]),
        "page": str(p.page),
        "tries": str(p.tries),
        "count0": "" if p.count0 is None else str(p.count0),
        "synced": "1" if p.synced else "0",
    }


def parse_progress(raw: Mapping[bytes, bytes]) -> Progress:
    f = {k.decode(): v.decode() for k, v in raw.items()}
    if not f.get("windows") and not f.get("cursor"):
        return Progress(synced=f.get("synced") == "1")
    try:
        windows = tuple(Window(lo, hi) for lo, hi in json.loads(f.get("windows") or "[]"))
        return Progress(
            cursor=int(f["cursor"]) if f.get("cursor") else None,
            windows=windows,
            page=int(f.get("page") or 1),
            tries=int(f.get("tries") or 0),
            count0=int(f["count0"]) if f.get("count0") else None,
            synced=f.get("synced") == "1",
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"cursor state is corrupt: {exc}") from None


class Store:
    """The notifier's Redis state for every practice. One per process."""

    def __init__(self, redis: Redis, keys: Keys, stream: str, *,
                 shape: Shape | None = None) -> None:
        """``shape``: ``[redis] stream_fields``, what events keep of their record in the
        stream (ids and the event's own id never change)."""
        self.shape = shape
        self.redis = redis
        self.keys = keys
        self.stream = stream
        self._commit = redis.register_script(COMMIT)
        self._publish = redis.register_script(PUBLISH_ONCE)
        self._codecs: dict[tuple[str, str], Codec] = {}
        self.fence: Callable[[], str] | None = None
        """The writer's current lease token, checked by every commit (see ``fenced``)."""

    def fenced(self, fence: Callable[[], str]) -> Store:
        """This store for one lease holder: each commit carries ``fence()``, the holder's
        current token ('' when it holds none), and is refused unless the lease holds it."""
        other = copy.copy(self)
        other.fence = fence
        return other

    async def progress(self, practice: str, resource: str) -> Progress:
        raw = await self.redis.hgetall(self.keys.cursor(practice, resource))
        return parse_progress(cast(dict[bytes, bytes], raw))

    async def codec(self, practice: str, resource: str) -> Codec:
        codec = self._codecs.get((practice, resource))
        if codec is None:
            zdict = await self.redis.get(self.keys.zdict(practice, resource))
            codec = Codec(cast(bytes | None, zdict))
            self._codecs[(practice, resource)] = codec
        return codec

    async def snapshots(self, practice: str, resource: str,
                        ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        found = await self.redis.hmget(self.keys.snapshots(practice, resource), list(ids))
        return cast(list[bytes | None], found)

    async def held_ids(self, practice: str, resource: str) -> Any:
        """Every record id with a snapshot (HSCAN: no long block on a large practice;
        NOVALUES would need Redis 7.4)."""
        async for rid, _ in self.redis.hscan_iter(self.keys.snapshots(practice, resource),
                                                  count=1000):
            yield rid.decode() if isinstance(rid, bytes) else str(rid)

    async def commit(self, practice: str, resource: str, *, progress: Progress | None,
                     snapshots: Mapping[str, bytes] | None = None,
                     deletes: Sequence[str] = (), events: Sequence[Event] = (),
                     zdict: bytes | None = None,
                     status: Mapping[str, str] | None = None,
                     fence: str | None = None) -> bool:
        """Apply one page atomically. False if this very call had already been applied.

        ``progress`` None leaves the cursor as it is (a reconciliation sweep). ``zdict``:
        the dictionary ``snapshots`` are encoded with, when it may not be stored yet; it is
        stored in the same step, and a different stored one raises DictionaryConflict with
        nothing written (the cached codec is dropped: the caller re-reads it). ``fence`` is
        the writer's lease token: the page is refused (LeaseLost) unless the practice's
        lease still holds it."""
        snaps = snapshots or {}
        fields = {**(progress_fields(progress) if progress else {}), **(status or {})}
        args: list[Any] = [uuid.uuid4().hex, zdict or b"", len(snaps)]
        for rid, blob in snaps.items():
            args += [rid, blob]
        args.append(len(deletes))
        args += list(deletes)
        for e in events:
            if (e.practice, e.resource) != (practice, resource):
                raise ValueError(f"event {e.id} is not of {practice}/{resource}")
        if self.shape is not None:
            events = [self._shaped(e) for e in events]
        args += stream_table(events)
        args.append(len(fields))
        for k, v in fields.items():
            args += [k, v]
        keys = [self.keys.cursor(practice, resource), self.keys.snapshots(practice, resource),
                self.stream, self.keys.zdict(practice, resource)]
        if fence is None and self.fence is not None:
            fence = self.fence()
        if fence is not None:
            keys.append(self.keys.lock(practice))
            args.append(fence)
        applied = int(await self._commit(keys=keys, args=args))
        if applied == -1:
            raise LeaseLost(f"{practice}/{resource}: page not committed, the practice's "
                            "lease is no longer this writer's")
        if applied == -2:
            self._codecs.pop((practice, resource), None)
            raise DictionaryConflict(
                f"{practice}/{resource}: another compression dictionary is stored than the "
                "one this process learned; nothing was written, the stored one is used next")
        return bool(applied)

    def _shaped(self, event: Event) -> Event:
        body = shape(self.shape or Shape(), event.stream_fields())
        if isinstance(body, Skip):
            # A stream shape has no filters and never skips (skip_hidden_updates is off):
            # storing the event whole instead would keep exactly what it must not.
            raise ValueError(f"[redis] stream_fields would skip {event.type} "
                             f"{event.id} ({body.reason}); it must cut, never skip")
        return replace(event, payload=body)

    async def publish(self, event: Event, dedupe_seconds: int = 7 * 86400) -> bool:
        """Append a ``notifier.*`` event once: its id is remembered for ``dedupe_seconds``,
        so a retried or repeated publish of the same incident adds nothing."""
        marker = f"{self.keys.prefix}:published:{event.id}"
        added = await self._publish(keys=[self.stream, marker],
                                    args=[dedupe_seconds, *stream_args(event)])
        return added is not None

    # -- a reconciliation sweep's progress, kept across restarts ---------------------------
    # A sweep of a large table takes many pages; a daemon restarted before the end (a deploy,
    # a crash, a kill) would otherwise start over, and under frequent restarts no sweep would
    # ever finish: no deletion found, no skipped row repaired. Its windows go with each page's
    # commit (the cursor hash's ``sweep`` field) and the ids it saw into a set.
    SWEEP_TTL = 30 * 86400
    """Seconds the seen ids outlive their last page (a sweep abandoned for good, say a
    resource removed from the configuration, does not hold memory for ever)."""

    @staticmethod
    def sweep_fields(progress: Progress) -> dict[str, str]:
        """The cursor hash field that records a sweep's windows, for a page's commit."""
        return {"sweep": json.dumps(progress_fields(progress))}

    async def sweep_state(self, practice: str, resource: str
                          ) -> tuple[Progress, set[str], set[str]] | None:
        """The sweep in progress (its windows, the ids it saw, the ids it confirmed
        gone), or None."""
        raw: Any = await self.redis.hget(self.keys.cursor(practice, resource), "sweep")
        if not raw:
            return None
        try:
            fields = json.loads(raw)
            progress = parse_progress({k.encode(): str(v).encode() for k, v in fields.items()})
        except (ValueError, AttributeError, StoreError):
            return None   # unreadable: the sweep starts over, which is always correct
        seen, gone = set(), set()
        async for m in self.redis.sscan_iter(self.keys.sweep(practice, resource), count=1000):
            member = m.decode() if isinstance(m, bytes) else str(m)
            if member.startswith("-"):
                gone.add(member[1:])
            else:
                seen.add(member)
        return progress, seen, gone

    async def sweep_saw(self, practice: str, resource: str, ids: Sequence[str],
                        gone: bool = False) -> None:
        """Add ids a sweep read (before the page's commit records its windows), or, with
        ``gone``, ids it confirmed deleted (a 404 on their own; stored as ``-<id>``)."""
        if ids:
            key = self.keys.sweep(practice, resource)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(key, *(f"-{i}" if gone else i for i in ids))
                pipe.expire(key, self.SWEEP_TTL)
                await pipe.execute()

    async def sweep_done(self, practice: str, resource: str) -> None:
        """Forget a finished sweep: the next one starts from the beginning."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.cursor(practice, resource), "sweep")
            pipe.delete(self.keys.sweep(practice, resource))
            await pipe.execute()

    async def note(self, practice: str, resource: str, **fields: str) -> None:
        """Status fields outside a commit (last poll time, last error)."""
        mapping: dict[Any, Any] = dict(fields)
        await self.redis.hset(self.keys.cursor(practice, resource), mapping=mapping)


# Append one event unless its marker exists. KEYS[1] stream, KEYS[2] marker;
# ARGV: marker lifetime (s), then the entry's fields as stream_args gives them.
PUBLISH_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  local m = tonumber(ARGV[2])
  local fields = {}
  for j = 1, 2 * m do fields[j] = ARGV[2 + j] end
  return redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return false
"""
