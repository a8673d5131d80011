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
