"""Events that mean something, derived from one change of one record.

A field-level event says "``state`` went from ``Confirmed`` to ``Cancelled``"; what an
integrator acts on is "the appointment was cancelled". Each rule here turns one change
(the snapshot we held, the record Dentally now shows) into zero or more derived events,
each a type of its own. The rules read only the two records: no clock, no IO. Even
``invoice.overdue`` is judged on the dates the records carry (each record's own
``updated_at`` is "today" for it), so the same change always derives the same events and
their ids stay deterministic.

The field and state names are Dentally's, as the sandbox describes them
(``notifier/sandbox/api.py``, ``dentally-api.md``). docs/events.md states each rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from notifier.core.timefmt import parse_ms

# Dentally's appointment states, and the shortcut event each one entered gets.
APPOINTMENT_STATES: tuple[str, ...] = ("Pending", "Confirmed", "Arrived", "In surgery",
                                       "Completed", "Cancelled", "Did not attend")
STATE_SHORTCUTS: dict[str, str] = {
    "Cancelled": "appointment.cancelled",
    "Confirmed": "appointment.confirmed",
    "Arrived": "appointment.arrived",
    "Completed": "appointment.completed",
    "Did not attend": "appointment.did_not_attend",
}

CONTACT_FIELDS: tuple[str, ...] = (
    "email_address", "mobile_phone", "home_phone", "work_phone",
    "address_line_1", "address_line_2", "address_line_3", "town", "county", "postcode",
)
"""A patient's fields a messaging tool must resync: email, phones, postal address."""

DERIVED_EVENT_TYPES: tuple[str, ...] = (
    "appointment.state_changed",
    *STATE_SHORTCUTS.values(),
    "appointment.rescheduled",
    "patient.archived",
    "patient.reactivated",
    "patient.contact_changed",
    "invoice.paid",
    "invoice.overdue",
    "payment.received",
    "payment.refunded",
)
"""Every derived type (a test checks each has rules, tests, a schema and docs)."""

_STATE = ("state",)
READS: dict[str, tuple[str, ...]] = {
    "appointment.state_changed": _STATE,
    **{t: _STATE for t in STATE_SHORTCUTS.values()},
    "appointment.rescheduled": ("start_time",),
    "patient.archived": ("active",),
    "patient.reactivated": ("active",),
    "patient.contact_changed": CONTACT_FIELDS,
    "invoice.paid": ("paid", "amount_outstanding"),
    "invoice.overdue": ("due_on", "amount_outstanding"),
    "payment.received": ("amount",),
    "payment.refunded": ("amount",),
}
"""The record fields each rule reads: a subscriber that may see none of them must not
receive the event (its type alone would tell what changed)."""

DETAILS: dict[str, dict[str, str]] = {
    "appointment.state_changed": {"from": "state", "to": "state"},
    **{t: {"from": "state", "to": "state"} for t in STATE_SHORTCUTS.values()},
    "appointment.rescheduled": {"from": "start_time", "to": "start_time"},
    "patient.archived": {"archived_reason": "archived_reason"},
    "invoice.paid": {"amount": "amount"},
    "invoice.overdue": {"due_on": "due_on", "amount_outstanding": "amount_outstanding"},
    "payment.received": {"amount": "amount"},
    "payment.refunded": {"amount": "amount"},
}
"""Each derived type's ``data`` details -> the record field whose value they carry, so
that a subscriber's field rules apply to them as to ``record`` (``changes`` are the
record's fields already)."""

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Derived:
    """One derived event: its type and the details it adds to ``data``."""

    type: str
    details: dict[str, Any] = field(default_factory=dict)


def money(value: Any) -> Decimal | None:
    """Dentally's money (strings such as ``"-76.0"``, sometimes numbers); None if absent
    or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _instant(value: Any) -> int | str | None:
    """A timestamp as milliseconds (so an offset rewrite is no move), else as it is."""
    if not isinstance(value, str):
        return None if value is None else str(value)
    try:
        return parse_ms(value)
    except ValueError:
        return value


def _local_date(value: Any) -> date | None:
    """The calendar date of a Dentally timestamp in its own (the practice's) offset."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


# -- appointments ---------------------------------------------------------------------------

def appointment(old: Record | None, new: Record) -> list[Derived]:
    """``state_changed`` (and its shortcut) when ``state`` changed; ``rescheduled`` when
    ``start_time`` moved (as an instant). A new appointment derives nothing: it had no
    state before."""
    if old is None:
        return []
    out: list[Derived] = []
    before, after = old.get("state"), new.get("state")
    if before != after and after is not None:
        out.append(Derived("appointment.state_changed", {"from": before, "to": after}))
        shortcut = STATE_SHORTCUTS.get(str(after))
        if shortcut is not None:
            out.append(Derived(shortcut, {"from": before, "to": after}))
    start_old, start_new = old.get("start_time"), new.get("start_time")
    if start_old is not None and start_new is not None \
            and _instant(start_old) != _instant(start_new):
        out.append(Derived("appointment.rescheduled", {"from": start_old, "to": start_new}))
    return out


# -- patients -------------------------------------------------------------------------------

def patient(old: Record | None, new: Record) -> list[Derived]:
    """``archived`` when ``active`` turns false, ``reactivated`` when it turns true again;
    ``contact_changed`` when an email, phone or address field changed (its ``changes``
    carry only those)."""
    if old is None:
        return []
    out: list[Derived] = []
    if old.get("active") is not False and new.get("active") is False:
        out.append(Derived("patient.archived", {"archived_reason": new.get("archived_reason")}))
    elif old.get("active") is False and new.get("active") is True:
        out.append(Derived("patient.reactivated"))
    contact = {f: [old.get(f), new.get(f)] for f in CONTACT_FIELDS
               if (f in old or f in new) and old.get(f) != new.get(f)}
    if contact:
        out.append(Derived("patient.contact_changed", {"changes": contact}))
    return out


# -- invoices -------------------------------------------------------------------------------

def balance(invoice: Record) -> Decimal | None:
    return money(invoice.get("amount_outstanding"))


def settled(invoice: Record) -> bool:
    """Marked ``paid``, or nothing left to pay on a non-zero amount."""
    if invoice.get("paid") is True:
        return True
    left, amount = balance(invoice), money(invoice.get("amount"))
    return left is not None and left <= 0 and amount is not None and amount > 0


def overdue(invoice: Record) -> bool:
    """A balance left after its due date (``due_on``), judged on the day of the record's
    own ``updated_at``: the last day we know it in this state."""
    left, due = balance(invoice), _date(invoice.get("due_on"))
    today = _local_date(invoice.get("updated_at"))
    return (left is not None and left > 0 and invoice.get("paid") is not True
            and due is not None and today is not None and due < today)


def invoice(old: Record | None, new: Record) -> list[Derived]:
    """``paid`` when an invoice that was not settled is; ``overdue`` when an invoice shows
    a balance after its due date and did not the last time we saw it (a new invoice
    already past due counts)."""
    out: list[Derived] = []
    if old is not None and not settled(old) and settled(new):
        out.append(Derived("invoice.paid", {"amount": new.get("amount")}))
    if overdue(new) and (old is None or not overdue(old)):
        out.append(Derived("invoice.overdue", {"due_on": new.get("due_on"),
                                               "amount_outstanding":
                                                   new.get("amount_outstanding")}))
    return out


# -- payments -------------------------------------------------------------------------------

def payment(old: Record | None, new: Record) -> list[Derived]:
    """A new payment: ``received`` for a positive amount (money taken), ``refunded`` for a
    negative one (money given back, recorded as a negative payment)."""
    if old is not None:
        return []
    amount = money(new.get("amount"))
    if amount is None or amount == 0:
        return []
    kind = "payment.received" if amount > 0 else "payment.refunded"
    return [Derived(kind, {"amount": new.get("amount")})]


RULES: dict[str, Callable[[Record | None, Record], list[Derived]]] = {
    "appointments": appointment,
    "patients": patient,
    "invoices": invoice,
    "payments": payment,
}
"""Resource -> its rules. Resources absent here derive nothing."""


assert set(READS) == set(DERIVED_EVENT_TYPES) and set(DETAILS) <= set(READS)


def derive(resource: str, old: Record | None, new: Record) -> list[Derived]:
    """The derived events of one published change of ``resource`` (``old`` None: created).
    Deletions derive nothing."""
    rule = RULES.get(resource)
    return [] if rule is None else rule(old, new)
