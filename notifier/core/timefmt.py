"""Timestamps as Dentally writes them, and as integers we can compare.

Dentally writes ``2026-07-04T20:35:55.599+01:00`` (milliseconds, the practice's local
offset). Internally every instant is an ``int`` of milliseconds since the epoch, so values
with different offsets compare correctly and cursor arithmetic is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_ms(value: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp; one without offset is UTC.

    Raises ValueError naming the value when it is not a timestamp.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def format_ms(ms: int) -> str:
    """``2026-11-27T15:00:00.123Z``: the form we send as ``updated_after``/``updated_before``."""
    dt = _EPOCH + ms * _MS
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def format_us(dt: datetime) -> str:
    """``2026-11-27T15:00:00.123456Z``: the event envelope's ``timestamp``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
