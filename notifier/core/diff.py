"""A page of records against their stored snapshots: the changes to publish.

Re-reading a record we already hold must publish nothing (overlapping windows and unstable
pages re-read constantly), and a stale copy (older ``updated_at`` than the snapshot, as an
unstable page or a lagging replica can serve) must never be published as a change back.
But a snapshot's stamp is trusted only up to the server's clock: a record stamped in the
future (an app server with a fast clock) would otherwise make every later real edit, which
carries an older stamp, look stale until real time passed the stamp. Content that differs
from a snapshot stamped after the server's "now" is published.

Seed mode (``initial_sync = "seed"``): until the first full sync is done, records met for
the first time are stored silently instead of published as ``created``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any],
         server_now: int | None = None) -> tuple[Change | None, bool]:
    """What ``new`` means given the snapshot ``old`` (``server_now``: the server's time, ms).

    Returns ``(change, store)``: the change to publish (None for none) and whether the
    snapshot must be replaced by ``new`` (a touch stores silently; a stale copy does not).
    """
    if old is None:
        return Change("created"), True
    old_ms, new_ms = updated_ms(old), updated_ms(new)
    trusted = old_ms is not None and (server_now is None or old_ms <= server_now)
    if trusted and new_ms is not None and old_ms is not None and new_ms < old_ms:
        return None, False
    changes = field_changes(old, new)
    if not changes:
        return None, False
    if changes.keys() <= IGNORED_FIELDS:
        return None, True
    return Change("updated", changes), True


def dedupe(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per id (an unstable page can serve one twice), the later ``updated_at`` kept."""
    by_id: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        rid = str(row["id"])
        other = by_id.get(rid)
        if other is None or str(row.get("updated_at", "")) >= str(other.get("updated_at", "")):
            by_id[rid] = row
    return list(by_id.values())


@dataclass(frozen=True)
class Verdict:
    """What to do with one row of a page."""

    publish: Change | None
    store: bool


def page_diff(rows: Sequence[Mapping[str, Any]], olds: Sequence[Mapping[str, Any] | None], *,
              emit_created: bool, server_now: int | None) -> list[Verdict]:
    """A verdict per row against its snapshot (None: none, or one that cannot be read).

    ``emit_created`` False is seed mode: a first sight is stored, not published."""
    out = []
    for row, old in zip(rows, olds, strict=True):
        change, store = diff(old, row, server_now)
        if change is not None and change.kind == "created" and not emit_created:
            change = None
        out.append(Verdict(change, store))
    return out
