"""Helpers shared by tests: reading the stream back."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis


async def stream_events(redis: Redis, stream: str) -> list[dict[str, Any]]:
    """Every event in ``stream``, as its parsed payload plus the entry's own fields."""
    out = []
    for _entry_id, fields in await redis.xrange(stream):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        event = json.loads(f["payload"])
        assert event["id"] == f["id"] and event["type"] == f["type"]
        assert f["practice"] == event["data"]["practice"]
        if "record_id" in event["data"]:
            assert f["record_id"] == event["data"]["record_id"]
            assert f["resource"] == event["data"]["resource"]
        out.append(event)
    return out
