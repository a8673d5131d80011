from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from notifier.events import canonical, notifier_event, record_event

T = datetime(2026, 11, 27, 15, 0, 0, 123456, tzinfo=UTC)
REC = {"id": 123, "email_address": "new@example.com",
       "updated_at": "2026-11-27T14:59:58.120+00:00"}


def test_envelope_is_the_product_contract() -> None:
    e = record_event("main", "patients", "updated", REC, T,
                     {"email_address": ["old@example.com", "new@example.com"]})
    doc = json.loads(e.payload)
    assert doc == {
        "id": e.id, "type": "patient.updated", "timestamp": "2026-11-27T15:00:00.123456Z",
        "version": 1,   # additive to PRODUCT.md's envelope: the contract's major version
        "data": {"practice": "main", "resource": "patients", "record_id": "123",
                 "updated_at": "2026-11-27T14:59:58.120+00:00",
                 "changes": {"email_address": ["old@example.com", "new@example.com"]},
                 "record": REC}}
    assert e.stream_fields() == {"id": e.id, "type": "patient.updated", "practice": "main",
                                 "resource": "patients", "record_id": "123",
                                 "payload": e.payload}
    assert e.id.startswith("evt_") and len(e.id) == 36


def test_created_has_no_changes_key() -> None:
    doc = json.loads(record_event("main", "appointments", "created", REC, T).payload)
    assert doc["type"] == "appointment.created" and "changes" not in doc["data"]


def test_ids_are_deterministic_and_distinguish_changes() -> None:
    a = record_event("main", "patients", "updated", REC, T)
    later = datetime(2027, 1, 1, tzinfo=UTC)
    assert record_event("main", "patients", "updated", dict(REC), later).id == a.id
    assert record_event("other", "patients", "updated", REC, T).id != a.id
    assert record_event("main", "patients", "created", REC, T).id != a.id
    changed = {**REC, "email_address": "x@example.com"}
    assert record_event("main", "patients", "updated", changed, T).id != a.id
    assert record_event("main", "patients", "updated", REC, T,
                        record_bytes=canonical(REC)).id == a.id


def test_notifier_events() -> None:
    data = {"reason": "401", "key": "ab" * 8, "action": "make a new key"}
    e = notifier_event("notifier.key.revoked", "main", data, T, "incident-1")
    doc = json.loads(e.payload)
    assert doc["type"] == "notifier.key.revoked" and doc["data"]["practice"] == "main"
    later = datetime(2027, 1, 1, tzinfo=UTC)
    assert e.id == notifier_event("notifier.key.revoked", "main", data, later,
                                  "incident-1").id


def test_notifier_event_data_must_match_its_model() -> None:
    """The builder uses the contract's models: a missing or misnamed field fails at once."""
    with pytest.raises(ValidationError, match="action"):
        notifier_event("notifier.key.revoked", "main", {"reason": "401", "key": "k"}, T)
