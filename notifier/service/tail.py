"""``dentally-notifier tail``: follow the event stream in the terminal.

``-n`` counts the events shown, after the ``--type`` and ``--practice`` filters; every line
is escaped (record fields are whatever was typed into Dentally). The follow loop blocks on
the stream for less than the client's socket timeout, so a quiet stream is no error.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any, TextIO

from redis.asyncio import Redis

from notifier.config import Settings
from notifier.ops.text import describe, escape
from notifier.store.connection import block_ms, connect

FOLLOW_BLOCK = 5.0
SCAN_CHUNK = 500


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Filter:
    def __init__(self, types: list[str], practices: list[str]) -> None:
        self.types, self.practices = types, practices

    def __call__(self, fields: dict[bytes, bytes]) -> bool:
        event_type = _text(fields.get(b"type", b""))
        if self.types and not any(fnmatch.fnmatchcase(event_type, t) for t in self.types):
            return False
        if self.practices:
            practice = _text(fields.get(b"practice", b""))
            if not any(fnmatch.fnmatchcase(practice, p) for p in self.practices):
                return False
        return True


async def _recent(redis: Redis, stream: str, last: int, keep: Filter) -> list[Any]:
    """The ``last`` entries that pass ``keep``, oldest first (reads back in chunks)."""
    found: list[Any] = []
    end = "+"
    while len(found) < last:
        chunk: Any = await redis.xrevrange(stream, end, "-", count=SCAN_CHUNK)
        for entry in chunk:
            if keep(entry[1]):
                found.append(entry)
                if len(found) == last:
                    break
        if len(chunk) < SCAN_CHUNK:
            break
        ms, _, seq = _text(chunk[-1][0]).partition("-")
        end = f"({ms}-{seq}"
    return list(reversed(found))


async def run(settings: Settings, out: TextIO, types: list[str], last: int,
              follow: bool = True, practices: list[str] | None = None,
              redis: Redis | None = None) -> None:
    """Print the ``last`` events matching the filters, then every new one."""
    own = redis is None
    if redis is None:
        redis = await connect(settings.redis.url)
    stream = settings.redis.stream
    keep = Filter(types, practices or [])
    try:
        # The newest entry now: following starts after it, whatever the filters show.
        newest: Any = await redis.xrevrange(stream, count=1)
        cursor = newest[0][0] if newest else "0-0"
        for _, fields in (await _recent(redis, stream, last, keep) if last > 0 else []):
            _show(fields, out)
        block = block_ms(redis, FOLLOW_BLOCK)
        while follow:
            reply: Any = await redis.xread({stream: cursor}, block=block, count=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    if keep(fields):
                        _show(fields, out)
    finally:
        if own:
            await redis.aclose()


def _show(fields: dict[bytes, bytes], out: TextIO) -> None:
    try:
        event = json.loads(fields[b"payload"])
        stamp = escape(str(event.get("timestamp", ""))[:19])
        line = f"{stamp}  {describe(event)}"
    except (KeyError, ValueError, TypeError, AttributeError):
        line = escape(f"(unreadable entry: type {_text(fields.get(b'type', b'?'))})")
    print(line, file=out, flush=True)
