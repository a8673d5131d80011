"""The derived-event rules, from the diff alone."""

from __future__ import annotations

from typing import Any

import pytest

from notifier.core.derive import (
    CONTACT_FIELDS,
    DERIVED_EVENT_TYPES,
    RULES,
    STATE_SHORTCUTS,
    derive,
)

T0 = "2026-11-20T09:00:00.000+00:00"
T1 = "2026-11-27T15:00:00.000+00:00"


def types(resource: str, old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    return [d.type for d in derive(resource, old, new)]


def appt(**kw: Any) -> dict[str, Any]:
    return {"id": 7, "state": "Pending", "start_time": "2026-12-01T10:00:00.000+00:00",
            "updated_at": T0, **kw}


# -- appointments -------------------------------------------------------------------------------

@pytest.mark.parametrize("state", sorted(STATE_SHORTCUTS))
def test_each_state_entered_gives_state_changed_and_its_shortcut(state: str) -> None:
    old = appt(state="Pending")
    out = derive("appointments", old, appt(state=state, updated_at=T1))
    assert [d.type for d in out] == ["appointment.state_changed", STATE_SHORTCUTS[state]]
    assert all(d.details == {"from": "Pending", "to": state} for d in out)


def test_in_surgery_and_pending_have_no_shortcut() -> None:
    assert types("appointments", appt(state="Arrived"), appt(state="In surgery")) == [
        "appointment.state_changed"]
    assert types("appointments", appt(state="Confirmed"), appt(state="Pending")) == [
        "appointment.state_changed"]


def test_same_state_and_other_fields_derive_nothing() -> None:
    assert types("appointments", appt(), appt(reason="Exam", updated_at=T1)) == []


def test_new_appointment_derives_nothing_even_when_cancelled() -> None:
    assert types("appointments", None, appt(state="Cancelled")) == []


def test_rescheduled_when_the_start_moves_not_when_its_offset_is_rewritten() -> None:
    old = appt()
    moved = appt(start_time="2026-12-02T10:00:00.000+00:00")
    (d,) = derive("appointments", old, moved)
    assert d.type == "appointment.rescheduled"
    assert d.details == {"from": old["start_time"], "to": moved["start_time"]}
    same_instant = appt(start_time="2026-12-01T11:00:00.000+01:00")
    assert types("appointments", old, same_instant) == []


def test_cancelled_and_moved_at_once_gives_both() -> None:
    new = appt(state="Cancelled", start_time="2026-12-03T10:00:00.000+00:00")
    assert types("appointments", appt(), new) == [
        "appointment.state_changed", "appointment.cancelled", "appointment.rescheduled"]


# -- patients ---------------------------------------------------------------------------------

def pat(**kw: Any) -> dict[str, Any]:
    return {"id": 1, "active": True, "archived_reason": None, "first_name": "Ava",
            "email_address": "a@example.com", "mobile_phone": "07000", "postcode": "AB1",
            "updated_at": T0, **kw}


def test_archived_carries_the_reason_and_reactivated_follows() -> None:
    archived = pat(active=False, archived_reason="Moved away")
    (d,) = derive("patients", pat(), archived)
    assert (d.type, d.details) == ("patient.archived", {"archived_reason": "Moved away"})
    assert types("patients", archived, pat()) == ["patient.reactivated"]
    assert types("patients", archived, pat(active=False, first_name="Eve")) == []


@pytest.mark.parametrize("field", ["email_address", "mobile_phone", "home_phone",
                                   "address_line_1", "town", "postcode"])
def test_contact_changed_carries_only_the_contact_fields(field: str) -> None:
    assert field in CONTACT_FIELDS
    new = pat(**{field: "new"}, first_name="Eve", updated_at=T1)
    (d,) = derive("patients", pat(), new)
    assert d.type == "patient.contact_changed"
    assert d.details == {"changes": {field: [pat().get(field), "new"]}}


def test_non_contact_fields_and_new_patients_derive_nothing() -> None:
    assert types("patients", pat(), pat(first_name="Eve", dentist_id=3)) == []
    assert types("patients", None, pat()) == []


# -- invoices ---------------------------------------------------------------------------------

def inv(**kw: Any) -> dict[str, Any]:
    return {"id": 3, "amount": "100.0", "amount_outstanding": "100.0", "paid": False,
            "dated_on": "2026-11-01", "due_on": "2026-12-01",
            "updated_at": "2026-11-10T09:00:00.000+00:00", **kw}


def test_paid_when_settled_by_the_flag_or_by_the_balance() -> None:
    (d,) = derive("invoices", inv(), inv(amount_outstanding="0.0", paid=True))
    assert (d.type, d.details) == ("invoice.paid", {"amount": "100.0"})
    assert types("invoices", inv(), inv(amount_outstanding="0.0")) == ["invoice.paid"]
    assert types("invoices", inv(), inv(amount_outstanding="40.0")) == []
    settled = inv(amount_outstanding="0.0", paid=True)
    assert types("invoices", settled, {**settled, "reference": "X"}) == []


def test_overdue_when_first_seen_with_a_balance_after_its_due_date() -> None:
    late = "2026-12-05T09:00:00.000+00:00"
    (d,) = derive("invoices", inv(), inv(amount_outstanding="60.0", updated_at=late))
    assert d.type == "invoice.overdue"
    assert d.details == {"due_on": "2026-12-01", "amount_outstanding": "60.0"}
    # Seen overdue already: a further part payment is not news.
    was_late = inv(amount_outstanding="60.0", updated_at=late)
    assert types("invoices", was_late, inv(amount_outstanding="30.0",
                                           updated_at="2026-12-06T09:00:00.000+00:00")) == []
    # Before the due date, or nothing to pay: not overdue.
    assert types("invoices", inv(), inv(amount_outstanding="60.0")) == []
    assert types("invoices", inv(), inv(amount_outstanding="0.0", paid=True,
                                        updated_at=late)) == ["invoice.paid"]


def test_overdue_judges_the_day_in_the_practices_own_offset() -> None:
    # 00:30 on 2 December in Sydney is still 1 December in UTC: the practice's day counts.
    at = "2026-12-02T00:30:00.000+11:00"
    assert types("invoices", None, inv(updated_at=at)) == ["invoice.overdue"]
    assert types("invoices", None, inv(updated_at="2026-12-01T23:30:00.000+00:00")) == []


def test_a_new_invoice_already_past_due_is_overdue() -> None:
    assert types("invoices", None, inv(updated_at="2026-12-02T09:00:00.000+00:00")) == [
        "invoice.overdue"]
    assert types("invoices", None, inv(due_on=None,
                                       updated_at="2027-01-01T09:00:00.000+00:00")) == []


# -- payments ---------------------------------------------------------------------------------

def test_payments_received_and_refunded_on_creation_only() -> None:
    (d,) = derive("payments", None, {"id": 9, "amount": "25.5"})
    assert (d.type, d.details) == ("payment.received", {"amount": "25.5"})
    assert types("payments", None, {"id": 9, "amount": "-25.5"}) == ["payment.refunded"]
    assert types("payments", None, {"id": 9, "amount": "0.0"}) == []
    assert types("payments", None, {"id": 9, "amount": "n/a"}) == []
    assert types("payments", {"id": 9, "amount": "25.5"}, {"id": 9, "amount": "-25.5"}) == []


# -- the table --------------------------------------------------------------------------------

def test_other_resources_derive_nothing() -> None:
    assert set(RULES) == {"appointments", "patients", "invoices", "payments"}
    assert derive("treatments", {"id": 1, "active": True}, {"id": 1, "active": False}) == []


def test_every_derived_type_has_a_rule_that_produces_it() -> None:
    made = set()
    cases: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = [
        *[("appointments", appt(), appt(state=s)) for s in STATE_SHORTCUTS],
        ("appointments", appt(), appt(start_time="2026-12-09T10:00:00.000+00:00")),
        ("patients", pat(), pat(active=False, email_address="b@example.com")),
        ("patients", pat(active=False), pat()),
        ("invoices", inv(), inv(amount_outstanding="0.0")),
        ("invoices", None, inv(updated_at="2026-12-09T10:00:00.000+00:00")),
        ("payments", None, {"id": 1, "amount": "5.0"}),
        ("payments", None, {"id": 1, "amount": "-5.0"}),
    ]
    for resource, old, new in cases:
        made |= set(types(resource, old, new))
    assert made == set(DERIVED_EVENT_TYPES)
