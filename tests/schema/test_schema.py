"""The published contract: models, generated documents, and the events built against them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_openapi

from notifier import cli, events
from notifier.core import hints, reconcile
from notifier.core.derive import DERIVED_EVENT_TYPES, Derived
from notifier.core.resources import RESOURCES
from notifier.sandbox.api import RECORD_FIELDS
from notifier.sandbox.state import Sandbox
from notifier.schema import documents
from notifier.schema.models import CATALOG, SCHEMA_VERSION
from tests.helpers import validate_event

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "docs" / "schema"
EVENTS_DOC = ROOT / "docs" / "events.md"
NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def test_committed_documents_are_the_generated_ones() -> None:
    """Fails when docs/schema is stale: run `dentally-notifier schema --out docs/schema`."""
    want = documents.render("all")
    have = {p.relative_to(SCHEMA_DIR).as_posix(): p.read_text(encoding="utf-8")
            for p in SCHEMA_DIR.rglob("*.json")}
    stale = sorted(k for k in want if have.get(k) != want[k])
    extra = sorted(set(have) - set(want))
    assert not stale and not extra, (
        f"docs/schema is out of date (stale {stale[:5]}, not generated {extra[:5]}): run "
        "`dentally-notifier schema --out docs/schema` and commit")


def test_the_catalog_is_every_type_the_notifier_publishes() -> None:
    assert list(CATALOG) == events.known_event_types()
    assert SCHEMA_VERSION == events.SCHEMA_VERSION == 1


def test_openapi_is_valid_3_1_with_one_webhook_per_type() -> None:
    doc = documents.openapi()
    validate_openapi(doc)
    assert doc["openapi"] == "3.1.0" and set(doc["webhooks"]) == set(CATALOG)


def test_asyncapi_describes_the_stream_entry_and_its_payload() -> None:
    doc = documents.asyncapi()
    assert doc["asyncapi"].startswith("3.")
    msg = doc["components"]["messages"]["PatientUpdated"]
    assert set(msg["payload"]["required"]) == set(events.Event.FIELDS)
    ref = msg["payload"]["properties"]["payload"]["contentSchema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    # Every reference resolves inside the document.
    text = json.dumps(doc)
    for target in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node: Any = doc
        for part in target.split("/"):
            node = node[part]


@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_record_events_of_every_resource_validate(resource: str) -> None:
    record = {"id": 12, "name": "x", "updated_at": "2026-11-27T14:59:58.120+00:00"}
    for kind in ("created", "deleted"):
        validate_event(json.loads(events.record_event("main", resource, kind, record,
                                                      NOW).payload))
    updated = events.record_event("main", resource, "updated", record, NOW,
                                  {"name": ["w", "x"]})
    validate_event(json.loads(updated.payload))


@pytest.mark.parametrize("etype", DERIVED_EVENT_TYPES)
def test_derived_events_validate(etype: str) -> None:
    details: dict[str, dict[str, Any]] = {
        "appointment.state_changed": {"from": None, "to": "Confirmed"},
        "appointment.rescheduled": {"from": "2026-12-01T10:00:00.000+00:00",
                                    "to": "2026-12-02T10:00:00.000+00:00"},
        "patient.archived": {"archived_reason": None},
        "patient.reactivated": {},
        "patient.contact_changed": {"changes": {"postcode": ["AB1", "AB2"]}},
        "invoice.paid": {"amount": "10.0"},
        "invoice.overdue": {"due_on": "2026-11-01", "amount_outstanding": "5.0"},
        "payment.received": {"amount": "10.0"},
        "payment.refunded": {"amount": "-10.0"},
    }
    detail = details.get(etype, {"from": "Pending", "to": "Cancelled"})
    record = {"id": 5, "updated_at": "2026-11-27T14:59:58.120+00:00"}
    cause = events.record_event("main", "appointments", "updated", record, NOW, {})
    event = events.derived_event(cause, Derived(etype, detail), record,
                                 "2026-11-27T15:00:00.000000Z", events.canonical(record))
    body = json.loads(event.payload)
    validate_event(body)
    assert body["data"]["cause"] == cause.id and event.id != cause.id
    again = events.derived_event(cause, Derived(etype, detail), record, "later",
                                 events.canonical(record))
    assert again.id == event.id   # deterministic: the cause's id and the type


def test_notifier_events_as_their_producers_build_them_validate() -> None:
    deletions = reconcile.Deletions(tracked=10, missing=5, confirmed=5)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("notifier.key.revoked", "main", {"reason": "401", "key": "ab" * 8, "action": "x"}),
        ("notifier.key.restored", "main", {"key": "ab" * 8}),
        ("notifier.key.restored", "main", {"key": "ab" * 8, "replaces": "cd" * 8}),
        ("notifier.key.idle", "main", {"key": "ab" * 8, "expires_in_days": 3.5,
                                       "action": "x"}),
        ("notifier.scope.denied", "main", {"resource": "payments", "key": "ab" * 8,
                                           "reason": "403", "action": "x"}),
        ("notifier.subscriber.disabled", "", {"subscriber": "crm", "reason": "410",
                                              "action": "x"}),
        ("notifier.reconcile.suspicious", "main", deletions.data("patients", 0.2, "x")),
        ("notifier.dentally_webhook.silent", "main", hints.Silent(
            "patients", 1795791600.0, 1795795200.0, 3600.0).data()),
        ("notifier.dentally_webhook.inactive", "main", {"webhook": hints.Webhook(
            "12", False, 50, 3, None, ("patient.updated",)).as_dict(), "action": "x"}),
        ("notifier.test", "", {"subscriber": "crm", "message": "hello"}),
    ]
    assert {c[0] for c in cases} == set(events.NOTIFIER_EVENT_TYPES)
    for etype, practice, data in cases:
        validate_event(json.loads(events.notifier_event(etype, practice, data, NOW,
                                                        "x").payload))


def test_an_event_off_the_contract_fails_validation() -> None:
    good = json.loads(events.record_event("main", "patients", "created", {"id": 1},
                                          NOW).payload)
    for broken in ({**good, "version": 2}, {**good, "data": {**good["data"], "extra": 1}},
                   {k: v for k, v in good.items() if k != "timestamp"},
                   {**good, "id": "evt_nothex"}):
        with pytest.raises(AssertionError):
            validate_event(broken)


# -- docs/events.md -------------------------------------------------------------------------------

def _doc() -> str:
    return EVENTS_DOC.read_text(encoding="utf-8")


def test_events_doc_has_every_derived_and_notifier_type() -> None:
    doc = _doc()
    missing = [t for t, et in CATALOG.items() if et.group != "record"
               and f"`{t}`" not in doc]
    assert not missing, f"docs/events.md does not describe {missing}"


def test_events_doc_examples_validate() -> None:
    blocks = re.findall(r"```json\n(.*?)```", _doc(), re.S)
    assert len(blocks) >= 5
    for block in blocks:
        validate_event(json.loads(block))


def test_events_doc_lists_the_fields_the_sandbox_records_carry() -> None:
    doc = _doc()
    sb = Sandbox()
    for resource, fields in RECORD_FIELDS.items():
        assert set(sb.create(resource)) == set(fields)   # the description is the sandbox's
        section = doc.split(f"### {resource}\n", 1)[1].split("\n### ", 1)[0]
        listed = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
        assert listed == set(fields), f"{resource}: {set(fields) ^ listed}"


# -- the command ----------------------------------------------------------------------------------

def test_schema_command_prints_and_writes(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "--format", "openapi"]) == 0
    assert "webhooks" in json.loads(capsys.readouterr().out)
    assert cli.main(["schema"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(CATALOG)
    assert cli.main(["schema", "--format", "all"]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(["schema", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "asyncapi.json").exists()
    assert len(list((tmp_path / "jsonschema").glob("*.json"))) == len(CATALOG)
