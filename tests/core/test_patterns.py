"""Subscriber event patterns against the event types that exist."""

from __future__ import annotations

import re
from pathlib import Path

from notifier.core.patterns import check_patterns
from notifier.events import NOTIFIER_EVENT_TYPES, known_event_types

KNOWN = known_event_types()


def test_a_plural_typo_fails_with_a_suggestion() -> None:
    [problem] = check_patterns(["patients.*"], KNOWN, {"patient"})
    assert problem.severity == "FAIL"
    assert "matches no event type" in problem.message and "'patient.*'" in problem.message
    [problem] = check_patterns(["appointment.update"], KNOWN, {"appointment"})
    assert problem.severity == "FAIL" and "'appointment.updated'" in problem.message


def test_real_patterns_pass() -> None:
    patterns = ["*", "patient.*", "appointment.updated", "notifier.*", "*.deleted",
                "notifier.key.*"]
    assert check_patterns(patterns, KNOWN, {"patient", "appointment"}) == []


def test_a_resource_no_practice_polls_is_a_warning() -> None:
    [problem] = check_patterns(["invoice.*"], KNOWN, {"patient"})
    assert problem.severity == "warn" and "invoice" in problem.message


def test_every_notifier_event_the_code_publishes_is_known() -> None:
    """A new ``notifier.*`` type must be added to the catalog (notifier/schema/models.py),
    with its data model, or `check` would call a pattern naming it a typo."""
    root = Path(__file__).resolve().parents[2] / "notifier"
    found = set()
    for path in root.rglob("*.py"):
        found |= set(re.findall(r"[\"'](notifier\.[a-z_]+\.[a-z_]+)[\"']", path.read_text()))
    found = {t for t in found if not t.startswith(("notifier.sandbox.", "notifier.service.",
                                                   "notifier.ops.", "notifier.core."))}
    assert found and found <= set(NOTIFIER_EVENT_TYPES), found - set(NOTIFIER_EVENT_TYPES)
