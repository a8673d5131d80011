"""Erasing one record from everything the notifier keeps in Redis (``forget``).

What may carry a record (docs/data-flows.md):

    <prefix>:{<practice>}:snap:<resource>    its snapshot (field of the hash)
    <prefix>:{<practice>}:zdict:<resource>   the compression dictionary: raw bytes of the
                                             first records seen, possibly this one
    <stream>                                 its events (fields practice/resource/record_id)
    <prefix>:sub:<name>:dead                 dead letters of its events (same fields)
    <prefix>:sub:<name>:log                  delivery attempts naming its events' ids
    <prefix>:sub:<name>:retry / :tries       scheduled retries of its stream entries
    the consumer groups' pending lists       its stream entries' ids

The dictionary cannot simply lose the record's bytes (every snapshot was deflated against
it), so it is learned again from the other records and every snapshot of the resource is
re-encoded against it, in one transaction. That needs the practice's poller stopped: the
caller holds the practice's lease throughout.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from notifier.store.codec import Codec, learn
from notifier.store.keys import Keys

CHUNK = 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Erased:
    snapshot: bool = False
    stream: int = 0
    dead_letters: int = 0
    log_entries: int = 0
    dictionary: str = "none"
    """``none`` (no learned dictionary), ``relearned`` or ``static`` (too few records left
    to learn from: the snapshots use the built-in dictionary)."""
    event_ids: set[str] = field(default_factory=set)


async def _entries(redis: Redis, key: str) -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    start = "-"
    while True:
        chunk: Any = await redis.xrange(key, start, "+", count=CHUNK)
        for entry_id, fields in chunk:
            yield _text(entry_id), {_text(k): v for k, v in fields.items()}
        if len(chunk) < CHUNK:
            return
        ms, seq = _text(chunk[-1][0]).split("-")
        start = f"{ms}-{int(seq) + 1}"


def _about(fields: dict[str, bytes], practice: str, resource: str, record_id: str) -> bool:
    return (_text(fields.get("practice", b"")) == practice
            and _text(fields.get("resource", b"")) == resource
            and _text(fields.get("record_id", b"")) == record_id)


async def _keys(redis: Redis, pattern: str) -> list[str]:
    return sorted([_text(k) async for k in redis.scan_iter(match=pattern, count=1000)])


async def erase(redis: Redis, keys: Keys, stream: str, practice: str, resource: str,
                record_id: str) -> Erased:
    out = Erased()
    out.snapshot = bool(await redis.hdel(keys.snapshots(practice, resource), record_id))
    subs = [k.rsplit(":", 2)[-2] for k in await _keys(redis, f"{keys.prefix}:sub:*:state")]
    subs += [k.rsplit(":", 2)[-2] for k in await _keys(redis, f"{keys.prefix}:sub:*:log")]
    subs += [k.rsplit(":", 2)[-2] for k in await _keys(redis, f"{keys.prefix}:sub:*:dead")]
    subs = sorted(set(subs))

    # The stream: its entries, and every trace of their ids in the delivery state.
    gone: list[str] = []
    async for entry_id, fields in _entries(redis, stream):
        if _about(fields, practice, resource, record_id):
            gone.append(entry_id)
            out.event_ids.add(_text(fields.get("id", b"")))
    if gone:
        groups: Any = await redis.xinfo_groups(stream)
        async with redis.pipeline(transaction=True) as p:
            for i in range(0, len(gone), CHUNK):
                part = gone[i:i + CHUNK]
                for g in groups:
                    p.xack(stream, _text(g["name"]), *part)
                for name in subs:
                    p.zrem(keys.sub(name, "retry"), *part)
                    p.hdel(keys.sub(name, "tries"), *part)
                p.xdel(stream, *part)
            await p.execute()
        out.stream = len(gone)

    for name in subs:
        dead = keys.sub(name, "dead")
        hit = [(eid, f) async for eid, f in _entries(redis, dead)
               if _about(f, practice, resource, record_id)]
        for _, f in hit:
            out.event_ids.add(_text(f.get("id", b"")))
        if hit:
            out.dead_letters += int(await redis.xdel(dead, *[eid for eid, _ in hit]))
    for name in subs:
        log = keys.sub(name, "log")
        lines: Any = await redis.lrange(log, 0, -1)
        for line in lines:
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                continue
            if event in out.event_ids:
                out.log_entries += int(await redis.lrem(log, 0, line))

    out.dictionary = await _relearn(redis, keys, practice, resource)
    return out


async def _relearn(redis: Redis, keys: Keys, practice: str, resource: str) -> str:
    """Learn the resource's dictionary again from the records it still holds and re-encode
    every snapshot against it, in one transaction (see the module's doc)."""
    zkey, skey = keys.zdict(practice, resource), keys.snapshots(practice, resource)
    stored: Any = await redis.get(zkey)
    if not stored:
        return "none"
    old = Codec(stored)
    records: dict[str, bytes] = {}
    seen: dict[str, int | None] = {}
    async for rid, blob in redis.hscan_iter(skey, count=CHUNK):
        try:
            # The seen-at time goes with it: a record stamped in the future keeps its
            # stale-copy exemption (notifier.core.diff).
            records[_text(rid)], seen[_text(rid)] = old.read(blob)
        except ValueError:
            continue  # unreadable already: treated as missing by the poller anyway
    zdict = learn(list(records.values()))
    new = Codec(zdict)
    async with redis.pipeline(transaction=True) as p:
        p.delete(skey)
        if zdict is None:
            p.delete(zkey)
        else:
            p.set(zkey, zdict)
        items = list(records.items())
        for i in range(0, len(items), CHUNK):
            p.hset(skey, mapping={rid: new.encode(c, seen[rid])
                                  for rid, c in items[i:i + CHUNK]})
        await p.execute()
    return "static" if zdict is None else "relearned"
