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

from notifier.core.diff import Kind
from notifier.core.resources import RESOURCES
from notifier.core.resources import get as get_resource
from notifier.core.timefmt import format_us

KINDS: tuple[Kind, ...] = ("created", "updated", "deleted")

NOTIFIER_EVENT_TYPES: tuple[str, ...] = (
    "notifier.key.revoked",
    "notifier.key.restored",
    "notifier.key.idle",
    "notifier.scope.denied",
    "notifier.subscriber.disabled",
    "notifier.reconcile.suspicious",
    "notifier.dentally_webhook.silent",
    "notifier.dentally_webhook.inactive",
    "notifier.test",
)
"""Events about the notifier itself (a test checks that the code publishes no other)."""


def known_event_types() -> list[str]:
    """Every event type the notifier can publish: ``<singular>.<kind>`` for each resource
    and the ``notifier.*`` types. Subscriber patterns that match none of them are typos."""
    return [f"{r.singular}.{kind}" for r in RESOURCES.values() for kind in KINDS] \
        + list(NOTIFIER_EVENT_TYPES)


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
    payload = head[:-1] + b',"data":' + _dumps(data)[:-1] + b',"record":' + body + b"}}"
    return Event(eid, etype, practice, resource, record_id, payload)


def notifier_event(type_: str, practice: str, data: Mapping[str, Any], now: datetime,
                   *identity: str) -> Event:
    """A ``notifier.*`` event; ``identity`` makes its id deterministic (e.g. the incident)."""
    eid = event_id(type_, practice, *identity)
    body = {"practice": practice, **data} if practice else dict(data)
    envelope = {"id": eid, "type": type_, "timestamp": format_us(now), "data": body}
    payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    return Event(eid, type_, practice, "", "", payload)
