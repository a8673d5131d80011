"""The published event contract as Pydantic models: the envelope, every ``data`` shape and
every event type, with when each one fires.

This is the one place that says what is published. The event builder
(:mod:`notifier.events`) takes the envelope's version and field names from here, the
generated documents under ``docs/schema/`` come from here (``dentally-notifier schema``),
and the tests validate every event the daemon publishes against those documents.

Versioning: within a major version (``version`` in the envelope) changes are additive
only: new event types, new optional fields. Consumers ignore what they do not know, so
the published schemas allow unknown properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from notifier.core.derive import DERIVED_EVENT_TYPES, STATE_SHORTCUTS
from notifier.core.resources import RESOURCES

SCHEMA_VERSION = 1
"""The envelope's ``version``: the major version of this contract."""

ENVELOPE_FIELDS: tuple[str, ...] = ("id", "type", "timestamp", "version", "data")
"""The envelope's keys, in the order the builder writes them."""

EVENT_ID_PATTERN = r"^evt_[0-9a-f]{32}$"

Money = str | int | float | None
"""Dentally writes money as strings (``"-76.0"``)."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Record(_Model):
    """The record as Dentally returns it (see docs/events.md for each resource's fields)."""

    model_config = ConfigDict(extra="allow")
    id: int | str = Field(description="Dentally's id: an integer, or a GUID string")


class RecordData(_Model):
    """``data`` of a ``created`` or ``deleted`` event."""

    practice: str = Field(description="the practice's name in the notifier's config")
    resource: str = Field(description="the Dentally resource, e.g. ``patients``")
    record_id: str = Field(description="the record's id, always as a string")
    updated_at: str | None = Field(description="the record's ``updated_at``, as Dentally "
                                               "wrote it")
    record: Record = Field(description="the current record (for ``deleted``, the last one "
                                       "known)")


Change = tuple[Any, Any]
"""``[old, new]`` of one field."""


class UpdatedData(RecordData):
    """``data`` of an ``updated`` event."""

    changes: dict[str, Change] = Field(description="each changed field: ``[old, new]``")


class DerivedData(RecordData):
    """``data`` of a derived event: the record's ids and current record, and ``cause``."""

    cause: str = Field(pattern=EVENT_ID_PATTERN,
                       description="the id of the field-level event it was derived from "
                                   "(in the stream just before it)")


class StateChangedData(DerivedData):
    from_: str | None = Field(alias="from", description="the state before")
    to: str = Field(description="the state now")


class RescheduledData(DerivedData):
    from_: str = Field(alias="from", description="the start time before")
    to: str = Field(description="the start time now")


class ArchivedData(DerivedData):
    archived_reason: str | None = Field(description="Dentally's reason, when given")


class ContactChangedData(DerivedData):
    changes: dict[str, Change] = Field(description="the contact fields that changed: "
                                                   "``[old, new]``")


class AmountData(DerivedData):
    amount: Money = Field(description="the amount, as Dentally wrote it")


class OverdueData(DerivedData):
    due_on: str = Field(description="the invoice's due date")
    amount_outstanding: Money = Field(description="the balance left to pay")


# -- events about the notifier ----------------------------------------------------------------

class _Practice(_Model):
    practice: str = Field(description="the practice's name in the notifier's config")


class _Key(_Practice):
    key: str = Field(description="the key's fingerprint: 16 hex digits of its SHA-256, "
                                 "never the key")


class KeyRevokedData(_Key):
    reason: str = Field(description="what Dentally answered, in words")
    action: str = Field(description="what to do, in words")


class KeyRestoredData(_Key):
    replaces: str | None = Field(default=None, description="the fingerprint of the key it "
                                                            "replaces, when a new key")


class KeyIdleData(_Key):
    expires_in_days: float = Field(description="days left before Dentally expires it")
    action: str


class ScopeDeniedData(_Key):
    resource: str
    reason: str
    action: str


class SubscriberDisabledData(_Model):
    subscriber: str
    reason: str
    action: str


class ReconcileSuspiciousData(_Practice):
    resource: str
    tracked: int = Field(description="records held for the resource")
    missing: int = Field(description="held records the sweep did not list")
    would_delete: int = Field(description="of them, confirmed gone (404)")
    max_delete_fraction: float
    action: str


class DentallyWebhookSilentData(_Practice):
    resource: str
    last_hint_at: float | None = Field(description="when the last hint came (Unix seconds)")
    silence_after: float = Field(description="seconds of silence, with changes found, that "
                                             "count as lost hints")
    action: str


class DentallyWebhook(_Model):
    """One of Dentally's webhooks as ``GET /v1/webhooks`` lists it (its URL left out)."""

    id: str
    active: bool | None
    failed_deliveries: int | None
    successful_deliveries: int | None
    last_delivered_at: str | None
    events: list[str]


class DentallyWebhookInactiveData(_Practice):
    webhook: DentallyWebhook
    action: str


class TestData(_Model):
    subscriber: str
    message: str


@dataclass(frozen=True)
class EventType:
    """One published event type: its ``data`` model and when it fires."""

    name: str
    data: type[BaseModel]
    when: str
    group: Literal["record", "derived", "notifier"]


_KIND_WHEN = {
    "created": "a record appears for the first time (after the first sync, or during it "
               "with ``initial_sync = \"emit\"``)",
    "updated": "a record changed (``updated_at`` alone does not count)",
    "deleted": "a reconciliation sweep finds a record gone (its fetch answers 404); "
               "``record`` is the last one known",
}
_KIND_DATA: dict[str, type[BaseModel]] = {"created": RecordData, "updated": UpdatedData,
                                         "deleted": RecordData}

_SHORTCUT_WHEN = {
    "appointment.cancelled": "an appointment's ``state`` becomes ``Cancelled``",
    "appointment.confirmed": "an appointment's ``state`` becomes ``Confirmed``",
    "appointment.arrived": "an appointment's ``state`` becomes ``Arrived`` (the patient is "
                           "in the practice)",
    "appointment.completed": "an appointment's ``state`` becomes ``Completed``",
    "appointment.did_not_attend": "an appointment's ``state`` becomes ``Did not attend``",
}

_DERIVED: dict[str, tuple[type[BaseModel], str]] = {
    "appointment.state_changed": (StateChangedData, "an appointment's ``state`` changed "
                                                    "(every change, with ``from`` and ``to``)"),
    **{t: (StateChangedData, w) for t, w in _SHORTCUT_WHEN.items()},
    "appointment.rescheduled": (RescheduledData, "an appointment's ``start_time`` moved "
                                                 "(``from`` and ``to``: the start times)"),
    "patient.archived": (ArchivedData, "a patient's ``active`` becomes false"),
    "patient.reactivated": (DerivedData, "an archived patient's ``active`` becomes true"),
    "patient.contact_changed": (ContactChangedData, "a patient's email, phone or postal "
                                                    "address fields changed"),
    "invoice.paid": (AmountData, "an invoice that was not settled becomes settled (``paid`` "
                                 "true, or nothing outstanding)"),
    "invoice.overdue": (OverdueData, "an invoice shows a balance after its ``due_on`` and "
                                     "did not when last seen"),
    "payment.received": (AmountData, "a new payment with a positive amount"),
    "payment.refunded": (AmountData, "a new payment with a negative amount (a refund)"),
}

_NOTIFIER: dict[str, tuple[type[BaseModel], str]] = {
    "notifier.key.revoked": (KeyRevokedData, "the practice's key was refused (revoked, "
                                             "expired or wrong); that practice stopped "
                                             "polling"),
    "notifier.key.restored": (KeyRestoredData, "the key works again, or a new key replaced "
                                               "a refused one"),
    "notifier.key.idle": (KeyIdleData, "at start: the key went unused for over 10 days "
                                       "and expires soon"),
    "notifier.scope.denied": (ScopeDeniedData, "the key may not read a resource (403)"),
    "notifier.subscriber.disabled": (SubscriberDisabledData, "a subscriber answered 410, "
                                                             "or failed for "
                                                             "``disable_after``"),
    "notifier.reconcile.suspicious": (ReconcileSuspiciousData, "a sweep would delete more "
                                                               "than ``max_delete_fraction`` "
                                                               "of a resource; none "
                                                               "published"),
    "notifier.dentally_webhook.silent": (DentallyWebhookSilentData, "Dentally's webhooks "
                                         "for a resource went silent while polls still "
                                         "found changes: hints are being lost; polling is "
                                         "back at its normal interval"),
    "notifier.dentally_webhook.inactive": (DentallyWebhookInactiveData, "Dentally switched "
                                           "one of the practice's webhooks off (50 failed "
                                           "deliveries)"),
    "notifier.test": (TestData, "sent by ``check --send-test`` only"),
}


def _catalog() -> dict[str, EventType]:
    out: dict[str, EventType] = {}
    for r in RESOURCES.values():
        for kind in ("created", "updated", "deleted"):
            t = f"{r.singular}.{kind}"
            out[t] = EventType(t, _KIND_DATA[kind], _KIND_WHEN[kind], "record")
    for t in DERIVED_EVENT_TYPES:
        model, when = _DERIVED[t]
        out[t] = EventType(t, model, when, "derived")
    for t, (model, when) in _NOTIFIER.items():
        out[t] = EventType(t, model, when, "notifier")
    return out


CATALOG: dict[str, EventType] = _catalog()
"""Every event type the notifier publishes, in documentation order."""

assert set(STATE_SHORTCUTS.values()) <= set(_DERIVED)


def model_name(type_: str) -> str:
    """``patient.updated`` -> ``PatientUpdated`` (schema and component names)."""
    return "".join(part.capitalize() for part in type_.replace(".", "_").split("_"))


def envelope(type_: str) -> type[BaseModel]:
    """The whole document of one event type, as the stream and the webhook body carry it."""
    et = CATALOG[type_]
    fields: dict[str, Any] = {
        "id": (str, Field(pattern=EVENT_ID_PATTERN,
                          description="deterministic: the same change of the same record "
                                      "always has the same id; deduplicate on it")),
        "type": (Literal[type_], Field(description="the event type")),
        "timestamp": (str, Field(description="when the notifier published it (UTC, "
                                             "microseconds)",
                                 json_schema_extra={"format": "date-time"})),
        "version": (Literal[1], Field(description="the contract's major version")),
        "data": (et.data, ...),
    }
    model: type[BaseModel] = create_model(model_name(type_), __base__=_Model,
                                          __doc__=f"``{type_}``: {et.when}.", **fields)
    return model
