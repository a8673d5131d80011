"""The sandbox's own description of the Dentally API, written from what is known about the
real one (``dentally-api.md`` in the team's notes), not from the product's resource table.

The product's resource table (in ``notifier/core``) is what the tests check; if the sandbox
were built from it, a wrong assumption there (a filter that Dentally ignores, say) would be
served back by the sandbox and could never fail a test. So this module never imports it.

What every endpoint does with the query parameters it is sent:

- It *honours* the parameters in its ``filters``; every other filter is **silently
  ignored**, as Dentally does with unknown parameters (so ``updated_after`` on
  ``/payments`` returns the whole history, and ``updated_before`` on ``/appointments`` does
  nothing).
- ``page``/``per_page`` (default 25, at most 100: more silently gives 25) and
  ``sort_by``/``sort_direction`` (``id`` or ``updated_at``) work everywhere.

Filters:

    updated_after    rows with updated_at strictly after the time
    updated_before   rows with updated_at strictly before the time
    dated_after      rows whose ``dated_on`` (a date) is on or after ``YYYY-MM-DD``
    cancelled        ``true`` also lists cancelled and did-not-attend appointments
    after, before    appointments whose ``start_time`` lies after / before the time
"""

from __future__ import annotations

from dataclasses import dataclass

UPDATED = frozenset({"updated_after", "updated_before"})
NO_FILTER: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Endpoint:
    name: str
    """Path segment and list envelope key (``/v1/patients`` -> ``{"patients": [...]}``)."""
    singular: str
    """Single-object envelope key (``/v1/patients/1`` -> ``{"patient": {...}}``)."""
    filters: frozenset[str] = UPDATED
    """Query filters this endpoint honours; every other one is silently ignored."""
    int_ids: bool = True
    """Integer ids; else GUID strings."""


def _e(name: str, singular: str, filters: frozenset[str] = UPDATED, *,
       int_ids: bool = True) -> Endpoint:
    return Endpoint(name, singular, filters, int_ids)


ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (
    # updated_after and updated_before both work.
    _e("patients", "patient"),
    _e("invoices", "invoice"),
    _e("invoice_items", "invoice_item", int_ids=False),
    _e("treatment_plans", "treatment_plan"),
    _e("treatment_appointments", "treatment_appointment"),
    _e("nhs_claims", "nhs_claim"),
    _e("patient_referrals", "patient_referral"),
    # updated_before is ignored on appointments; cancelled ones need cancelled=true.
    _e("appointments", "appointment",
       frozenset({"updated_after", "cancelled", "after", "before"})),
    # Every filter but updated_after is ignored on treatment plan items.
    _e("treatment_plan_items", "treatment_plan_item", frozenset({"updated_after"})),
    # No updated_after on payments (ignored: the whole history comes back); by date only.
    _e("payments", "payment", frozenset({"dated_after"})),
    # No usable update filter at all: full pulls only.
    _e("accounts", "account", NO_FILTER),
    _e("recalls", "recall", NO_FILTER),
    _e("sites", "site", NO_FILTER, int_ids=False),
    _e("users", "user", NO_FILTER),
    _e("practitioners", "practitioner", NO_FILTER),
    _e("rooms", "room", NO_FILTER),
    _e("treatments", "treatment", NO_FILTER),
    _e("contracts", "contract", NO_FILTER, int_ids=False),
    _e("payment_plans", "payment_plan", NO_FILTER),
    _e("acquisition_sources", "acquisition_source", NO_FILTER),
    _e("appointment_reasons", "appointment_reason", NO_FILTER),
    _e("appointment_cancellation_reasons", "appointment_cancellation_reason", NO_FILTER),
)}

# Appointments listed only with cancelled=true.
HIDDEN_APPOINTMENT_STATES = frozenset({"Cancelled", "Did not attend"})

# The fields each record carries, as the sandbox serves them (from what is known of
# Dentally's, dentally-api.md), with what each means. docs/events.md lists them per resource;
# a test checks that the sandbox's records carry exactly these.
_STAMPS = {
    "created_at": "when it was created (ISO 8601, milliseconds, the practice's offset)",
    "updated_at": "when it last changed (same form); every change moves it",
}
RECORD_FIELDS: dict[str, dict[str, str]] = {
    "patients": {
        "id": "integer id",
        "uuid": "a GUID",
        "active": "false once archived",
        "archived_reason": "why it was archived, or null",
        "title": "Mr, Mrs, Ms, Miss, Dr, Mx",
        "first_name": "", "middle_name": "", "last_name": "", "preferred_name": "",
        "gender": "true male, false female (Dentally's encoding)",
        "date_of_birth": "YYYY-MM-DD",
        "email_address": "", "mobile_phone": "", "home_phone": "",
        "address_line_1": "", "address_line_2": "", "town": "", "county": "", "postcode": "",
        "site_id": "GUID of the practice site",
        "dentist_id": "the patient's dentist (a practitioner id)",
        "payment_plan_id": "integer id or null",
        "medical_alert": "true when the patient has a medical alert",
        "recall_interval": "months between recalls",
        "ethnicity": "", "nhs_number": "",
        "use_email": "consents to email", "use_sms": "consents to SMS",
        "metadata": "a small free object",
        **_STAMPS,
    },
    "appointments": {
        "id": "integer id",
        "uuid": "a GUID",
        "patient_id": "the patient (null for a diary block)",
        "practitioner_id": "",
        "state": "Pending, Confirmed, Arrived, In surgery, Completed, Cancelled, "
                 "Did not attend",
        "reason": "e.g. Exam, Hygiene",
        "duration": "minutes",
        "start_time": "timestamp", "finish_time": "timestamp",
        "cancelled_at": "when it was cancelled, or null",
        "pending_at": "when it entered that state, or null",
        "confirmed_at": "", "arrived_at": "", "in_surgery_at": "", "completed_at": "",
        "did_not_attend_at": "",
        "metadata": "a small free object",
        **_STAMPS,
    },
    "invoices": {
        "id": "integer id",
        "patient_id": "", "site_id": "",
        "reference": "e.g. INV123456",
        "amount": "money as a string, e.g. \"76.0\"",
        "amount_outstanding": "the balance left to pay (money string)",
        "paid": "true once settled",
        "dated_on": "YYYY-MM-DD",
        "due_on": "YYYY-MM-DD (the sandbox: dated_on + 30 days)",
        **_STAMPS,
    },
    "payments": {
        "id": "integer id",
        "patient_id": "", "site_id": "",
        "amount": "money string: positive received, negative refunded",
        "method": "Card, Cash, Cheque, BACS, Direct Debit, Finance",
        "dated_on": "YYYY-MM-DD, the day it was taken",
        "reference": "or null",
        **_STAMPS,
    },
}
