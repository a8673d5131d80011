"""A record against its stored snapshot: a change, or nothing.

Re-reading a record we already hold must publish nothing (overlapping windows and unstable
pages re-read constantly), and a stale copy (older ``updated_at`` than the snapshot, as an
unstable page or a lagging replica can serve) must never be published as a change back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from notifier.core.timefmt import parse_ms

Kind = Literal["created", "updated", "deleted"]

# Fields whose change alone is not a change of the record (a "touch").
IGNORED_FIELDS = frozenset({"updated_at"})

_MISSING: Any = object()


@dataclass(frozen=True)
class Change:
    kind: Kind
    changes: dict[str, list[Any]] | None = None
    """``{field: [old, new]}``, for ``updated`` only."""


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; a JSON value changing type is a change.
    return type(a) is type(b) and a == b


def field_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for every top-level field that differs (absent is None)."""
    out: dict[str, list[Any]] = {}
    for key in (*new.keys(), *(k for k in old if k not in new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if not _same(a, b):
            out[key] = [None if a is _MISSING else a, None if b is _MISSING else b]
    return out


def updated_ms(record: Mapping[str, Any]) -> int | None:
    value = record.get("updated_at")
    if not isinstance(value, str):
        return None
    try:
        return parse_ms(value)
    except ValueError:
        return None


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> tuple[Change | None, bool]:
    """What ``new`` means given the snapshot ``old``.

    Returns ``(change, store)``: the change to publish (None for none) and whether the
    snapshot must be replaced by ``new`` (a touch stores silently; a stale copy does not).
    """
    if old is None:
        return Change("created"), True
    old_ms, new_ms = updated_ms(old), updated_ms(new)
    if old_ms is not None and new_ms is not None and new_ms < old_ms:
        return None, False
    changes = field_changes(old, new)
    if not changes:
        return None, False
    if changes.keys() <= IGNORED_FIELDS:
        return None, True
    return Change("updated", changes), True
