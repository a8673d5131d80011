"""What one subscriber receives of an event: filters, patient-data minimisation, format.

Pure: the stream entry in, the body to sign and send (or why it is not sent) out. The
stream keeps the whole event (it is the operator's own store); each subscriber gets only
what its configuration allows, shaped here at delivery time, before signing:

1. **filters** (``practices``, ``sites``, ``changed``): an event they reject is skipped;
2. **fields** (``fields`` allow-list or ``exclude_fields``, per resource or for all):
   applied to ``data.record`` and ``data.changes``; an update whose changes were all
   removed is skipped (the subscriber must not even learn that something it may not see
   changed);
3. **payload** (``full``, ``changes``: no record but its id fields, ``thin``: ids, type
   and ``updated_at``);
4. **format** (``standard`` envelope, or CloudEvents 1.0 structured JSON).

A subscriber with none of these gets the stored bytes untouched, without parsing (the
fast path of the delivery benchmark).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from notifier.core import derive
from notifier.core.diff import IGNORED_FIELDS

PayloadMode = Literal["full", "changes", "thin"]
Format = Literal["standard", "cloudevents"]
SkipReason = Literal["practice", "site", "changed", "excluded_only"]

ALL = "*"
"""The key of a per-resource field table that applies to every resource not listed."""

ENVELOPE_THIN = ("practice", "resource", "record_id", "updated_at", "cause")
"""What ``thin`` keeps of ``data``: the ids, where it comes from, and ``updated_at``."""

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


def is_id_field(name: str) -> bool:
    """``id``, ``uuid`` and references (``patient_id``, ``site_id``): what identifies a
    record and what it belongs to, kept by ``payload = "changes"``."""
    return name in ("id", "uuid") or name.endswith("_id")


@dataclass(frozen=True)
class FieldRule:
    """One resource's field rule: an allow-list or a deny-list (never both)."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    def keeps(self, name: str) -> bool:
        if self.allow is not None:
            return name in self.allow
        return name not in self.deny


@dataclass(frozen=True)
class Shape:
    """One subscriber's rules, resolved from its config once."""

    payload: PayloadMode = "full"
    fields: Mapping[str, FieldRule] = field(default_factory=dict)
    """Resource name (or ``*``) -> rule; a resource with no rule keeps every field."""
    practices: frozenset[str] | None = None
    sites: frozenset[str] | None = None
    changed: Mapping[str, frozenset[str]] | None = None
    """Resource name -> fields; an update of a resource listed here is delivered only when
    one of them changed; updates of other resources are not delivered either."""
    format: Format = "standard"
    regions: Mapping[str, str] = field(default_factory=dict)
    """Practice name -> region, for CloudEvents' ``source``."""
    skip_hidden_updates: bool = True
    """Skip an update whose changes were all removed (a subscriber); the stream keeps it,
    with empty ``changes``, since it records that the record changed."""

    @property
    def identity(self) -> bool:
        """True when every event goes out exactly as stored."""
        return (self.payload == "full" and not self.fields and self.sites is None
                and self.changed is None and self.format == "standard")

    def rule(self, resource: str) -> FieldRule | None:
        return self.fields.get(resource) or self.fields.get(ALL)

    @property
    def content_type(self) -> str:
        return CLOUDEVENTS_CONTENT_TYPE if self.format == "cloudevents" else JSON_CONTENT_TYPE


@dataclass(frozen=True)
class Skip:
    reason: SkipReason


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def shape(rules: Shape, entry: Mapping[str, bytes | str]) -> bytes | Skip:
    """The body ``rules`` let through for the stream entry ``entry`` (its fields: ``type``,
    ``practice``, ``resource``, ``payload``...), or why it is skipped."""
    practice = _text(entry.get("practice"))
    if rules.practices is not None and practice and practice not in rules.practices:
        return Skip("practice")
    payload = entry.get("payload", b"")
    raw = payload if isinstance(payload, bytes) else payload.encode()
    if rules.identity:
        return raw
    envelope: dict[str, Any] = json.loads(raw)
    data = envelope.get("data")
    resource = _text(entry.get("resource"))
    if isinstance(data, dict) and resource:
        skip = _record_rules(rules, resource, envelope.get("type", ""), data)
        if skip is not None:
            return skip
    if rules.format == "cloudevents":
        envelope = cloudevent(envelope, practice, resource,
                              rules.regions.get(practice, "unknown"))
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def _record_rules(rules: Shape, resource: str, etype: str, data: dict[str, Any]
                  ) -> Skip | None:
    """Filters and minimisation of an event about a record; changes ``data`` in place."""
    record = data.get("record")
    changes = data.get("changes")
    if rules.sites is not None:
        site = record.get("site_id") if isinstance(record, dict) else None
        # Records without a site (appointments, most settings) are not site-bound.
        if site is not None and str(site) not in rules.sites:
            return Skip("site")
    is_update = isinstance(changes, dict) and etype.endswith(".updated")
    if rules.changed is not None and isinstance(changes, dict) and is_update:
        wanted = rules.changed.get(resource)
        if not wanted or not wanted.intersection(changes):
            return Skip("changed")
    rule = rules.rule(resource)
    reads = derive.READS.get(etype)
    if rule is not None and reads is not None:
        # A derived event: not at all when the subscriber may see none of the fields its
        # rule reads; its details only when it may see the field they carry.
        # The stream (skip_hidden_updates off) keeps the event, cut like any other.
        if rules.skip_hidden_updates and not any(rule.keeps(f) for f in reads):
            return Skip("excluded_only")
        for key, source in derive.DETAILS.get(etype, {}).items():
            if not rule.keeps(source):
                data.pop(key, None)
        if (rules.skip_hidden_updates and isinstance(changes, dict) and changes
                and not any(rule.keeps(k) for k in changes)):
            return Skip("excluded_only")
    if rule is not None:
        if isinstance(record, dict):
            data["record"] = {k: v for k, v in record.items() if rule.keeps(k)}
        if isinstance(changes, dict):
            kept = {k: v for k, v in changes.items() if rule.keeps(k)}
            # (updated_at changes with every update: alone, it is no change to deliver)
            if (is_update and changes and rules.skip_hidden_updates
                    and kept.keys() <= IGNORED_FIELDS):
                return Skip("excluded_only")
            data["changes"] = kept
    if rules.payload == "changes":
        record = data.pop("record", None)
        if isinstance(record, dict):
            data["ids"] = {k: v for k, v in record.items() if is_id_field(k)}
    elif rules.payload == "thin":
        for key in list(data):
            if key not in ENVELOPE_THIN:
                del data[key]
    return None


def cloudevent(envelope: Mapping[str, Any], practice: str, resource: str, region: str
               ) -> dict[str, Any]:
    """The envelope as a CloudEvents 1.0 structured-mode event."""
    data = envelope.get("data")
    out: dict[str, Any] = {
        "specversion": "1.0",
        "id": envelope.get("id"),
        "source": f"dentally://{region}/{practice}" if practice else "dentally://notifier",
        "type": envelope.get("type"),
    }
    record_id = data.get("record_id") if isinstance(data, dict) else None
    if resource and record_id:
        out["subject"] = f"{resource}/{record_id}"
    out["time"] = envelope.get("timestamp")
    out["datacontenttype"] = "application/json"
    out["data"] = data
    return out
