"""The fields a record of each well-described resource carries.

From Dentally's API description (docs/dentally-api notes) and the sandbox, which serves
exactly these. Subscriber field rules (``fields``, ``exclude_fields``, ``changed``) and
``[redis] stream_fields`` are checked against them, because a misspelt name in a
deny-list would silently let the very field it meant to hide through. Resources not
listed here are generic: any well-formed name is accepted for them.
"""

from __future__ import annotations

import re

_COMMON = ("id", "created_at", "updated_at")

KNOWN_FIELDS: dict[str, frozenset[str]] = {
    "patients": frozenset((*_COMMON,
        "uuid", "active", "archived_reason", "title", "first_name", "middle_name",
        "last_name", "preferred_name", "gender", "date_of_birth", "email_address",
        "mobile_phone", "home_phone", "work_phone", "address_line_1", "address_line_2",
        "town", "county", "postcode", "site_id", "dentist_id", "payment_plan_id",
        "medical_alert", "medical_alert_text", "recall_interval", "ethnicity",
        "nhs_number", "use_email", "use_sms", "metadata")),
    "appointments": frozenset((*_COMMON,
        "uuid", "patient_id", "practitioner_id", "state", "reason", "duration",
        "start_time", "finish_time", "cancelled_at", "pending_at", "confirmed_at",
        "arrived_at", "in_surgery_at", "completed_at", "did_not_attend_at", "notes",
        "room_id", "site_id", "metadata")),
    "invoices": frozenset((*_COMMON,
        "patient_id", "site_id", "reference", "amount", "amount_outstanding", "paid",
        "dated_on", "due_on")),
    "payments": frozenset((*_COMMON,
        "patient_id", "site_id", "amount", "method", "dated_on", "reference")),
    "sites": frozenset((*_COMMON, "name", "address_line_1", "town", "postcode", "active")),
}

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def unknown(resource: str, names: list[str] | tuple[str, ...] | frozenset[str]) -> str | None:
    """An error naming the first field ``resource`` does not have, or None."""
    for name in names:
        if not NAME.match(name):
            return f"{name!r} is not a field name (lower case letters, digits, '_')"
        known = KNOWN_FIELDS.get(resource)
        if known is not None and name not in known:
            return (f"{resource} records have no field {name!r} (known: "
                    f"{', '.join(sorted(known))})")
    return None


def unknown_anywhere(names: list[str] | tuple[str, ...]) -> str | None:
    """For a list that applies to every resource: each name must be a field of at least
    one described resource (a generic resource's fields go in a per-resource list)."""
    every = frozenset().union(*KNOWN_FIELDS.values())
    for name in names:
        if not NAME.match(name):
            return f"{name!r} is not a field name (lower case letters, digits, '_')"
        if name not in every:
            return (f"no resource has a field {name!r}; for the fields of a resource not "
                    "described in notifier/core/fields.py, give a per-resource list, e.g. "
                    f"{{ recalls = [{name!r}] }}")
    return None
