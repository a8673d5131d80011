"""What each subscriber receives: filters, field rules, payload modes, CloudEvents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from notifier import config
from notifier.core.shaping import ALL, FieldRule, Shape, Skip, shape
from notifier.errors import ConfigError
from notifier.events import record_event

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
PATIENT = {"id": 7, "first_name": "Ada", "last_name": "Lovelace", "email_address": "a@x.io",
           "date_of_birth": "1990-01-02", "nhs_number": "485 777 3456", "medical_alert": True,
           "site_id": "site-a", "dentist_id": 3, "updated_at": "2026-11-27T14:59:58.120+00:00"}


def entry(kind: str = "updated", changes: dict[str, Any] | None = None,
          resource: str = "patients", record: dict[str, Any] | None = None,
          practice: str = "main") -> dict[str, bytes | str]:
    e = record_event(practice, resource, kind, record or PATIENT, NOW,  # type: ignore[arg-type]
                     changes if kind == "updated" else None)
    return dict(e.stream_fields())


def body(rules: Shape, fields: dict[str, bytes | str]) -> dict[str, Any]:
    out = shape(rules, fields)
    assert not isinstance(out, Skip), out
    return dict(json.loads(out))


def test_no_rules_sends_the_stored_bytes_untouched() -> None:
    e = entry(changes={"email_address": ["o@x.io", "a@x.io"]})
    assert shape(Shape(), e) == e["payload"]


def test_allow_list_applies_to_record_and_changes() -> None:
    rules = Shape(fields={ALL: FieldRule(allow=frozenset({"id", "first_name",
                                                          "email_address"}))})
    got = body(rules, entry(changes={"email_address": ["o", "a@x.io"],
                                     "date_of_birth": ["1", "2"]}))
    assert got["data"]["record"] == {"id": 7, "first_name": "Ada", "email_address": "a@x.io"}
    assert got["data"]["changes"] == {"email_address": ["o", "a@x.io"]}


def test_update_of_excluded_fields_only_is_skipped() -> None:
    rules = Shape(fields={"patients": FieldRule(deny=frozenset({"date_of_birth",
                                                                "nhs_number"}))})
    assert shape(rules, entry(changes={"nhs_number": [None, "1"]})) == Skip("excluded_only")
    assert shape(rules, entry(changes={"nhs_number": [None, "1"], "updated_at": ["a", "b"]})
                 ) == Skip("excluded_only")
    got = body(rules, entry(changes={"nhs_number": [None, "1"], "last_name": ["L", "M"]}))
    assert got["data"]["changes"] == {"last_name": ["L", "M"]}
    assert "nhs_number" not in got["data"]["record"]
    # created and deleted events carry no changes: delivered, minimised
    assert "date_of_birth" not in body(rules, entry("created"))["data"]["record"]


def test_rules_for_one_resource_leave_the_others_whole() -> None:
    rules = Shape(fields={"patients": FieldRule(allow=frozenset({"id"}))})
    appt = {"id": 1, "state": "Confirmed", "patient_id": 7, "updated_at": None}
    got = body(rules, entry("created", resource="appointments", record=appt))
    assert got["data"]["record"] == appt


def test_changes_mode_keeps_changes_and_ids_only() -> None:
    got = body(Shape(payload="changes"), entry(changes={"email_address": ["o", "a@x.io"]}))
    assert "record" not in got["data"]
    assert got["data"]["ids"] == {"id": 7, "site_id": "site-a", "dentist_id": 3}
    assert got["data"]["changes"] == {"email_address": ["o", "a@x.io"]}


def test_thin_mode_keeps_ids_type_and_updated_at() -> None:
    got = body(Shape(payload="thin"), entry(changes={"email_address": ["o", "a@x.io"]}))
    assert got["type"] == "patient.updated"
    assert got["data"] == {"practice": "main", "resource": "patients", "record_id": "7",
                           "updated_at": PATIENT["updated_at"]}


def test_practice_site_and_changed_filters() -> None:
    e = entry(changes={"email_address": ["o", "a@x.io"]})
    assert shape(Shape(practices=frozenset({"other"})), e) == Skip("practice")
    assert not isinstance(shape(Shape(practices=frozenset({"main"})), e), Skip)
    assert shape(Shape(sites=frozenset({"site-b"})), e) == Skip("site")
    assert not isinstance(shape(Shape(sites=frozenset({"site-a"})), e), Skip)
    wanted = Shape(changed={"patients": frozenset({"email_address"}),
                            "appointments": frozenset({"state"})})
    assert not isinstance(shape(wanted, e), Skip)
    assert shape(wanted, entry(changes={"postcode": ["A", "B"]})) == Skip("changed")
    # changed restricts updates only: a created event still goes out
    assert not isinstance(shape(wanted, entry("created")), Skip)
    only_appts = Shape(changed={"appointments": frozenset({"state"})})
    assert shape(only_appts, e) == Skip("changed")


def test_cloudevents_structured() -> None:
    e = entry(changes={"email_address": ["o", "a@x.io"]})
    got = body(Shape(format="cloudevents", regions={"main": "uk"}), e)
    std = json.loads(e["payload"])
    assert got["specversion"] == "1.0"
    assert got["id"] == std["id"] and got["type"] == "patient.updated"
    assert got["source"] == "dentally://uk/main"
    assert got["subject"] == "patients/7"
    assert got["time"] == std["timestamp"]
    assert got["data"] == std["data"]
    assert Shape(format="cloudevents").content_type.startswith("application/cloudevents+json")


def sub(**kw: Any) -> dict[str, Any]:
    return {"name": "crm", "url": "https://crm.example.com/h",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", **kw}


def settings(**kw: Any) -> config.Settings:
    return config.parse({"practices": [{"name": "main", "api_key": "k"}],
                         "subscribers": [sub(**kw)]})


@pytest.mark.parametrize(("kw", "message"), [
    ({"fields": ["id", "emial_address"]}, r"fields: no resource has a field 'emial_address'"),
    ({"exclude_fields": {"patients": ["date_of_brith"]}},
     r"exclude_fields: patients records have no field 'date_of_brith'"),
    ({"exclude_fields": {"patient": ["id"]}}, r"unknown resource 'patient'"),
    ({"fields": ["id"], "exclude_fields": ["nhs_number"]}, r"not both \(both given for \*\)"),
    ({"payload": "thin", "fields": ["id"]}, r'payload = "thin" sends no record fields'),
    ({"changed": ["appointments.state"]}, r"in the singular"),
    ({"changed": ["appointment.stat"]}, r"no field 'stat'"),
    ({"practices": ["nope"]}, r"no practice named 'nope'"),
    ({"headers": {"webhook-signature": "x"}}, r"cannot be overridden"),
    ({"headers": {"bad header": "x"}}, r"not a valid HTTP header name"),
    ({"headers": {"X-Auth": {"env": "A", "file": "/b"}}}, r"exactly one of env, file, value"),
    ({"format": "cloudevent"}, r"format"),
    ({"payload": "minimal"}, r"payload"),
])
def test_invalid_rules_are_named(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**kw)


def test_fields_for_generic_resources_need_a_per_resource_list() -> None:
    s = settings(fields={"recalls": ["id", "due_date"], "patients": ["id"]})
    rules = s.subscribers[0].shape()
    assert rules.rule("recalls") == FieldRule(allow=frozenset({"id", "due_date"}))


def test_header_values_from_env_and_file_never_in_repr(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", "s3cr3t-env")
    (tmp_path / "tok").write_text("s3cr3t-file\n")
    s = settings(headers={"Authorization": {"env": "CRM_TOKEN"},
                          "X-Api-Key": {"file": str(tmp_path / "tok")},
                          "X-Inline": "s3cr3t-inline"})
    assert s.subscribers[0].header_values() == {
        "Authorization": "s3cr3t-env", "X-Api-Key": "s3cr3t-file", "X-Inline": "s3cr3t-inline"}
    text = repr(s) + str(s.model_dump())
    assert "s3cr3t" not in text
    monkeypatch.delenv("CRM_TOKEN")
    with pytest.raises(ConfigError, match="header 'Authorization': environment variable "
                                          "CRM_TOKEN is not set"):
        s.subscribers[0].header_values()


def test_stream_fields_keep_the_update_with_empty_changes() -> None:
    s = config.parse({"redis": {"stream_fields": {"patients": ["id", "updated_at"]}}})
    rules = s.redis.stream_shape()
    assert rules is not None
    got = body(rules, entry(changes={"nhs_number": [None, "1"]}))
    assert got["data"]["changes"] == {}
    assert got["data"]["record"] == {"id": 7, "updated_at": PATIENT["updated_at"]}


# -- derived events -----------------------------------------------------------------------

def derived_entry(resource: str, old: dict[str, Any], new: dict[str, Any], etype: str
                  ) -> dict[str, bytes | str]:
    from notifier.core.derive import derive
    from notifier.core.diff import field_changes
    from notifier.events import canonical, derived_event
    cause = record_event("main", resource, "updated", new, NOW, field_changes(old, new))
    (d,) = [d for d in derive(resource, old, new) if d.type == etype]
    return dict(derived_event(cause, d, new, "2026-11-27T15:00:00.000000Z",
                              canonical(new)).stream_fields())


APPT = {"id": 4, "patient_id": 7, "state": "Confirmed", "reason": "Exam",
        "start_time": "2026-12-01T10:00:00.000+00:00", "updated_at": "2026-11-27T10:00:00Z"}


def test_derived_event_details_follow_the_field_rules() -> None:
    e = derived_entry("appointments", APPT, {**APPT, "state": "Cancelled"},
                      "appointment.cancelled")
    allow_state = Shape(fields={"appointments": FieldRule(allow=frozenset({"id", "state"}))})
    got = body(allow_state, e)["data"]
    assert (got["from"], got["to"], got["record"]) == ("Confirmed", "Cancelled",
                                                       {"id": 4, "state": "Cancelled"})
    # A subscriber that may not see `state` does not learn of the cancellation at all.
    no_state = Shape(fields={"appointments": FieldRule(deny=frozenset({"state"}))})
    assert shape(no_state, e) == Skip("excluded_only")


def test_derived_contact_changes_are_filtered_and_skipped_when_all_hidden() -> None:
    new = {**PATIENT, "email_address": "b@x.io"}
    e = derived_entry("patients", PATIENT, new, "patient.contact_changed")
    keep_email = Shape(fields={"patients": FieldRule(allow=frozenset({"id",
                                                                      "email_address"}))})
    assert body(keep_email, e)["data"]["changes"] == {"email_address": ["a@x.io", "b@x.io"]}
    phones_only = Shape(fields={"patients": FieldRule(allow=frozenset({"id",
                                                                       "mobile_phone"}))})
    assert shape(phones_only, e) == Skip("excluded_only")


def test_derived_archive_reason_only_for_subscribers_that_may_see_it() -> None:
    new = {**PATIENT, "active": False, "archived_reason": "Deceased"}
    e = derived_entry("patients", {**PATIENT, "active": True}, new, "patient.archived")
    rule = Shape(fields={"patients": FieldRule(allow=frozenset({"id", "active"}))})
    got = body(rule, e)["data"]
    assert "archived_reason" not in got and "Deceased" not in json.dumps(got)
    assert body(Shape(payload="thin"), e)["data"]["cause"]


@pytest.mark.parametrize(("stream_fields", "filters", "message"), [
    ({"patients": ["id", "updated_at"]}, {"sites": ["S1"]},
     r"\(crm\).sites: \[redis\] stream_fields drops site_id from patients"),
    ({"*": ["id", "site_id"], "appointments": ["id", "state"]}, {"sites": ["S1"]},
     r"\(crm\).sites: \[redis\] stream_fields drops site_id from appointments"),
    ({"appointments": ["id", "site_id"]}, {"changed": ["appointment.state"]},
     r"\(crm\).changed: \[redis\] stream_fields drops state from appointments"),
])
def test_a_filter_on_a_field_the_stream_drops_is_a_config_error(
        stream_fields: dict[str, list[str]], filters: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse({"redis": {"stream_fields": stream_fields},
                      "subscribers": [sub(**filters)]})
    # Kept in the stream, the same filters are fine.
    config.parse({"redis": {"stream_fields": {"*": ["id", "site_id", "state"]}},
                  "subscribers": [sub(**filters)]})
