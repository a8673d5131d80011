"""The table of Dentally resources and how each one is polled.

One row per resource keeps every per-resource quirk (which filters work, which extra
parameters are needed, what the event type is called) in one place instead of scattered
``if resource == ...`` branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["incremental", "dated", "full"]


@dataclass(frozen=True)
class Resource:
    name: str
    """Path segment and list envelope key, e.g. ``patients``."""
    singular: str
    """Single-object envelope key and event type prefix, e.g. ``patient``."""
    strategy: Strategy = "incremental"
    """``incremental`` polls by ``updated_after``; ``dated`` lists by ``dated_after`` over
    ``lookback_days`` and diffs; ``full`` lists everything and diffs (no update filter)."""
    closed_windows: bool = True
    """Whether ``updated_before`` works, so a window can be closed (not on appointments)."""
    params: tuple[tuple[str, str], ...] = field(default=())
    """Extra query parameters every list request needs (``cancelled=true``)."""
    interval: float = 60.0
    """Default seconds between polls."""
    lookback_days: int = 0
    """For ``dated``: how many days back each poll lists (later edits of older rows are
    found by the reconciliation sweep)."""
    int_ids: bool = True
    """Integer ids (else GUID strings); every id is handled as a string regardless."""


def _full(name: str, singular: str, int_ids: bool = True) -> Resource:
    return Resource(name, singular, strategy="full", closed_windows=False, interval=3600.0,
                    int_ids=int_ids)


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        # Incremental by updated_after.
        Resource("patients", "patient"),
        Resource("appointments", "appointment", closed_windows=False,
                 params=(("cancelled", "true"),)),
        Resource("invoices", "invoice"),
        Resource("invoice_items", "invoice_item", int_ids=False),
        Resource("treatment_plans", "treatment_plan"),
        # Dentally ignores every filter but updated_after here: no closed windows.
        Resource("treatment_plan_items", "treatment_plan_item", closed_windows=False),
        Resource("treatment_appointments", "treatment_appointment"),
        Resource("nhs_claims", "nhs_claim"),
        Resource("patient_referrals", "patient_referral"),
        # By date.
        Resource("payments", "payment", strategy="dated", closed_windows=False,
                 lookback_days=31),
        # No update filter: full listing and diff, at a slower pace.
        _full("accounts", "account"),
        _full("recalls", "recall"),
        _full("sites", "site", int_ids=False),
        _full("users", "user"),
        _full("practitioners", "practitioner"),
        _full("rooms", "room"),
        _full("treatments", "treatment"),
        _full("contracts", "contract", int_ids=False),
        _full("payment_plans", "payment_plan"),
        _full("acquisition_sources", "acquisition_source"),
        _full("appointment_reasons", "appointment_reason"),
        _full("appointment_cancellation_reasons", "appointment_cancellation_reason"),
    )
}

BY_SINGULAR: dict[str, str] = {r.singular: r.name for r in RESOURCES.values()}
"""``patient`` -> ``patients``: event types and subscriber rules name a resource so."""

DEFAULT_RESOURCES: tuple[str, ...] = ("patients", "appointments", "invoices", "payments")


def get(name: str) -> Resource:
    """The resource called ``name``; KeyError names the known ones."""
    try:
        return RESOURCES[name]
    except KeyError:
        known = ", ".join(sorted(RESOURCES))
        raise KeyError(f"unknown resource {name!r} (known: {known})") from None
