"""The event envelope, deterministic event ids and the stream entry fields.

The envelope is the contract of PRODUCT.md, identical in the Redis stream and in webhook
bodies. Its ``id`` is derived from what changed, never from when we noticed, so the same
change of the same record gets the same id across restarts and re-reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notifier.core.derive import Derived
from notifier.core.diff import Kind
from notifier.core.resources import get as get_resource
from notifier.core.timefmt import format_us
from notifier.schema.models import CATALOG, SCHEMA_VERSION

KINDS: tuple[Kind, ...] = ("created", "updated", "deleted")

NOTIFIER_EVENT_TYPES: tuple[str, ...] = tuple(
    t for t, et in CATALOG.items() if et.group == "notifier")
"""Events about the notifier itself (a test checks that the code publishes no other)."""

_VERSION = b',"version":%d' % SCHEMA_VERSION


def known_event_types() -> list[str]:
    """Every event type the notifier can publish (the contract's catalog):
    ``<singular>.<kind>`` for each resource, the derived types and the ``notifier.*`` types.
    Subscriber patterns that match none of them are typos."""
    return list(CATALOG)


def canonical(value: Any) -> bytes:
    """Compact JSON with sorted keys: equal records give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_id(*parts: str | bytes) -> str:
    """``evt_`` and 32 hex digits of a BLAKE2b hash over ``parts`` (128 bits)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x1f")
    return "evt_" + h.hexdigest()


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    practice: str
    resource: str
    record_id: str
    payload: bytes
    """The JSON envelope, exactly as stored and sent."""
    cause: str = ""
    """For a derived event, the id of the event it was derived from (not a stream field)."""

    FIELDS = ("id", "type", "practice", "resource", "record_id", "payload")
    """The fields of a stream entry (PRODUCT.md), in order."""

    def stream_fields(self) -> dict[str, str | bytes]:
        """This event's stream entry: every script that appends to the stream writes
        exactly these fields (see ``store.redis.stream_args`` and ``stream_table``)."""
        return {"id": self.id, "type": self.type, "practice": self.practice,
                "resource": self.resource, "record_id": self.record_id,
                "payload": self.payload}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def record_event(practice: str, resource: str, kind: Kind, record: Mapping[str, Any],
                 now: datetime | str, changes: Mapping[str, Any] | None = None,
                 record_bytes: bytes | None = None) -> Event:
    """``<singular>.<kind>`` for ``record``.

    ``record_bytes`` is the record's canonical JSON when the caller has it: it is hashed for
    the id and spliced into the payload as is, so a page of events costs one encoding per
    record. ``now`` may be given preformatted, once per page.
    """
    record_id = str(record["id"])
    body = canonical(record) if record_bytes is None else record_bytes
    eid = event_id(practice, resource, record_id, kind, body)
    etype = f"{get_resource(resource).singular}.{kind}"
    stamp = now if isinstance(now, str) else format_us(now)
    data: dict[str, Any] = {
        "practice": practice,
        "resource": resource,
        "record_id": record_id,
        "updated_at": record.get("updated_at"),
    }
    if kind == "updated":
        data["changes"] = dict(changes or {})
    head = _dumps({"id": eid, "type": etype, "timestamp": stamp})
    payload = (head[:-1] + _VERSION + b',"data":' + _dumps(data)[:-1] + b',"record":' + body
               + b"}}")
    return Event(eid, etype, practice, resource, record_id, payload)


def derived_event(cause: Event, derived: Derived, record: Mapping[str, Any], now: str,
                  record_bytes: bytes) -> Event:
    """A derived event (``appointment.cancelled``, ...) of the change ``cause`` published.

    Its id is the cause's id and its type hashed together: as deterministic as the cause's.
    ``data`` carries the record's ids, ``cause``, the rule's details and the record."""
    eid = event_id(cause.id, derived.type)
    data: dict[str, Any] = {
        "practice": cause.practice,
        "resource": cause.resource,
        "record_id": cause.record_id,
        "updated_at": record.get("updated_at"),
        "cause": cause.id,
        **derived.details,
    }
    head = _dumps({"id": eid, "type": derived.type, "timestamp": now})
    payload = (head[:-1] + _VERSION + b',"data":' + _dumps(data)[:-1] + b',"record":'
               + record_bytes + b"}}")
    return Event(eid, derived.type, cause.practice, cause.resource, cause.record_id, payload,
                 cause.id)


def notifier_event(type_: str, practice: str, data: Mapping[str, Any], now: datetime,
                   *identity: str) -> Event:
    """A ``notifier.*`` event; ``identity`` makes its id deterministic (e.g. the incident).

    ``data`` goes through the type's model (``notifier.schema.models``): a field of the
    wrong name or type fails here, in the tests, not at a consumer."""
    eid = event_id(type_, practice, *identity)
    body = {"practice": practice, **data} if practice else dict(data)
    body = CATALOG[type_].data.model_validate(body).model_dump(mode="json", by_alias=True,
                                                               exclude_unset=True)
    envelope = {"id": eid, "type": type_, "timestamp": format_us(now),
                "version": SCHEMA_VERSION, "data": body}
    payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    return Event(eid, type_, practice, "", "", payload)
