"""A page of records against their stored snapshots: the changes to publish.

Re-reading a record we already hold must publish nothing (overlapping windows and unstable
pages re-read constantly), and a stale copy (older ``updated_at`` than the snapshot, as an
unstable page or a lagging replica can serve) must never be published as a change back.
But a snapshot's stamp is trusted only if it was not ahead of the server's clock when the
record was seen: a record stamped in the future (an app server with a fast clock) would
otherwise make every later real edit, which carries an older stamp, look stale. Comparing
with the server's clock *now* is not enough: once real time passes the stamp, an edit made
before that moment but read after it would still be dropped (a catch-up after downtime;
campaign seed 202). So a snapshot stamped ahead of the server time it was seen at stores
that time (``seen_at``; :func:`seen_mark`; "ahead" means past an *upper* bound of the
server's time at the read, or every record read a second after its edit would be marked
and lose the guard), and content that differs from it is published
however late it is read. A snapshot without ``seen_at`` was not ahead when seen (or was
stored by an older version: then the server's clock now is the bound).

Only ``updated_at`` moving on is a change too (see :data:`STAMP_FIELDS`).

Seed mode (``initial_sync = "seed"``): until the first full sync is done, records met for
the first time are stored silently instead of published as ``created``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from notifier.core.timefmt import parse_ms

Kind = Literal["created", "updated", "deleted"]

# Fields whose change alone is a change of the record only if the stamp moved on: a later
# ``updated_at`` with nothing else changed is a version Dentally shows (an edit and its
# revert between two polls, or while the daemon was down; a save that changed nothing) and
# is published, or the consumer's copy would keep an old ``updated_at`` for good and the
# edit would leave no trace (campaign seed 101). The same instant written another way (an
# other offset) is stored silently.
STAMP_FIELDS = frozenset({"updated_at"})
IGNORED_FIELDS = STAMP_FIELDS
"""The old name, used by :mod:`notifier.core.shaping` (a change of these alone is no change
to deliver when a subscriber's field rule hides everything else)."""

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


def seen_mark(record: Mapping[str, Any], seen_at: int | None) -> int | None:
    """The ``seen_at`` to store with a snapshot of ``record`` read by server time
    ``seen_at`` at the latest (an upper bound): that time if the record's stamp is ahead
    of it, else None (nothing)."""
    stamp = updated_ms(record)
    if seen_at is None or stamp is None or stamp <= seen_at:
        return None
    return seen_at


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any],
         server_now: int | None = None,
         seen_at: int | None = None) -> tuple[Change | None, bool]:
    """What ``new`` means given the snapshot ``old``.

    ``server_now``: the latest the server's time (ms) can have been as ``new`` was read
    (an upper bound; see :func:`page_diff`); ``seen_at``: the server
    time ``old`` was seen at, stored with it when its stamp was ahead of that (then the
    stamp is never trusted). Returns ``(change, store)``: the change to publish (None for
    none) and whether the snapshot must be replaced by ``new`` (the same stamp written
    another way stores silently; a stale copy does not).
    """
    if old is None:
        return Change("created"), True
    old_ms, new_ms = updated_ms(old), updated_ms(new)
    bound = seen_at if seen_at is not None else server_now
    trusted = old_ms is not None and (bound is None or old_ms <= bound)
    if trusted and new_ms is not None and old_ms is not None and new_ms < old_ms:
        return None, False
    changes = field_changes(old, new)
    if not changes:
        return None, False
    if changes.keys() <= STAMP_FIELDS and (old_ms is None or new_ms is None
                                           or new_ms <= old_ms):
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
    seen_at: int | None = None
    """To store with the new snapshot (its stamp is ahead of the server's clock)."""


def page_diff(rows: Sequence[Mapping[str, Any]], olds: Sequence[Mapping[str, Any] | None], *,
              emit_created: bool, server_now: int | None,
              seen_at: Sequence[int | None] | None = None) -> list[Verdict]:
    """A verdict per row against its snapshot (None: none, or one that cannot be read).

    ``server_now``: the latest the server's time can have been when the rows were read (an
    upper bound, ``ServerClock.upper``: with a lower bound an ordinary record edited a
    second before it was read would be marked and lose its stale-copy guard);
    ``seen_at``: each snapshot's stored seen-at time, if any.
    ``emit_created`` False is seed mode: a first sight is stored, not published."""
    seens = [None] * len(olds) if seen_at is None else seen_at
    out = []
    for row, old, seen in zip(rows, olds, seens, strict=True):
        change, store = diff(old, row, server_now, seen)
        if change is not None and change.kind == "created" and not emit_created:
            change = None
        out.append(Verdict(change, store, seen_mark(row, server_now) if store else None))
    return out
