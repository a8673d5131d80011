"""Erasing one record (``forget``) against a real Redis: what the others keep."""

from __future__ import annotations

import json

from notifier.store.codec import Codec, learn
from notifier.store.erase import erase
from notifier.store.redis import Store


async def test_forget_keeps_the_seen_at_time_of_the_other_snapshots(store: Store) -> None:
    """Forgetting one record re-encodes every other snapshot against a new dictionary; a
    snapshot stamped in the future must keep the server time it was seen at (codec tag
    0x04), or it would lose its exemption from the stale-copy rule after a forget."""
    records = {str(i): json.dumps({"id": i, "email_address": f"p{i}@example.com",
                                   "updated_at": "2026-11-27T15:00:00.000+00:00"},
                                  separators=(",", ":")).encode() for i in range(30)}
    zdict = learn(list(records.values()))
    assert zdict is not None
    codec = Codec(zdict)
    seen_at = 1_795_000_000_000
    snaps = {rid: codec.encode(c, seen_at if rid == "7" else None)
             for rid, c in records.items()}
    redis, keys = store.redis, store.keys
    await redis.set(keys.zdict("main", "patients"), zdict)
    await redis.hset(keys.snapshots("main", "patients"), mapping=snaps)

    out = await erase(redis, keys, store.stream, "main", "patients", "3")
    assert out.snapshot and out.dictionary == "relearned"
    after = Codec(await redis.get(keys.zdict("main", "patients")))
    stored = await redis.hgetall(keys.snapshots("main", "patients"))
    assert b"3" not in stored and len(stored) == 29
    read = {k.decode(): after.read(v) for k, v in stored.items()}
    assert read["7"] == (records["7"], seen_at)
    assert all(read[rid] == (c, None) for rid, c in records.items() if rid not in ("3", "7"))
