"""Derived events end to end: the poller against the sandbox and a real Redis."""

from __future__ import annotations

import itertools
from typing import Any

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.store.redis import Store
from tests.helpers import stream_events
from tests.service.test_poller import make_poller


def _by_record(events: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for e in events:
        out.setdefault((e["data"]["resource"], e["data"]["record_id"]), []).append(e["type"])
    return out


async def test_derived_events_follow_their_cause_in_the_stream(
        store: Store, sandbox: SandboxThread, control: SandboxControl) -> None:
    appts = await control.seed("appointments", 3)
    patients = await control.seed("patients", 2)
    pollers = {r: make_poller(store, sandbox, resource=r, initial_sync="seed")
               for r in ("appointments", "patients", "payments")}
    for p in pollers.values():
        assert await p.poll_once() == 0
    await control.update("appointments", appts[0], state="Cancelled")
    await control.update("appointments", appts[1], state="Arrived",
                         start_time="2027-01-04T09:00:00.000+00:00")
    await control.update("appointments", appts[2], reason="Hygiene")
    await control.update("patients", patients[0], active=False, archived_reason="Moved")
    await control.update("patients", patients[1], email_address="new@example.com")
    refund = await control.create("payments", amount="-20.0")
    for p in pollers.values():
        await p.poll_once()
    for p in pollers.values():
        assert await p.poll_once() == 0     # a re-read derives nothing again

    events = await stream_events(store.redis, store.stream, derived=True)
    assert _by_record(events) == {
        ("appointments", appts[0]): ["appointment.updated", "appointment.state_changed",
                   "appointment.cancelled"],
        ("appointments", appts[1]): ["appointment.updated", "appointment.state_changed",
                   "appointment.arrived", "appointment.rescheduled"],
        ("appointments", appts[2]): ["appointment.updated"],
        ("patients", patients[0]): ["patient.updated", "patient.archived"],
        ("patients", patients[1]): ["patient.updated", "patient.contact_changed"],
        ("payments", str(refund["id"])): ["payment.created", "payment.refunded"],
    }
    # Each derived event directly follows its cause or a sibling of the same cause.
    for before, after in itertools.pairwise(events):
        cause = after["data"].get("cause")
        if cause is not None:
            assert cause in (before["id"], before["data"].get("cause"))
    cancelled = next(e for e in events if e["type"] == "appointment.cancelled")
    assert (cancelled["data"]["to"], cancelled["data"]["record"]["state"]) == (
        "Cancelled", "Cancelled")
    for p in pollers.values():
        await p.client.aclose()
