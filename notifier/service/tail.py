"""``dentally-notifier tail``: follow the event stream in the terminal."""

from __future__ import annotations

import fnmatch
import json
from typing import Any, TextIO

from notifier.config import Settings
from notifier.demo import describe
from notifier.service.daemon import connect


async def run(settings: Settings, out: TextIO, types: list[str], last: int,
              follow: bool = True) -> None:
    """Print the ``last`` events, then every new one matching ``types`` (globs)."""
    redis = await connect(settings)
    stream = settings.redis.stream
    try:
        recent: Any = await redis.xrevrange(stream, count=last) if last else []
        cursor = recent[0][0] if recent else "$"
        for entry in reversed(recent):
            _show(entry[1], types, out)
        while follow:
            reply: Any = await redis.xread({stream: cursor}, block=5000, count=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    _show(fields, types, out)
    finally:
        await redis.aclose()


def _show(fields: dict[bytes, bytes], types: list[str], out: TextIO) -> None:
    event_type = fields.get(b"type", b"").decode()
    if types and not any(fnmatch.fnmatchcase(event_type, t) for t in types):
        return
    event = json.loads(fields[b"payload"])
    print(f"{event['timestamp'][:19]}  {describe(event)}", file=out, flush=True)
