"""Deletions that fail closed: the threshold and what acceptance covers."""

from __future__ import annotations

from notifier.core.reconcile import Deletions, allowed


def test_more_than_the_fraction_is_held() -> None:
    assert allowed(Deletions(tracked=100, missing=20, confirmed=20), 0.2, None)
    held = Deletions(tracked=100, missing=30, confirmed=21)
    assert held.suspicious(0.2) and not allowed(held, 0.2, None)
    assert not Deletions(tracked=0, missing=0, confirmed=0).suspicious(0.2)
    # Everything gone: a key reading another practice, an empty listing.
    assert not allowed(Deletions(tracked=5, missing=5, confirmed=5), 0.2, None)


def test_acceptance_covers_as_many_deletions_as_were_held_and_no_more() -> None:
    held = Deletions(tracked=100, missing=30, confirmed=30)
    assert allowed(held, 0.2, 30)
    assert allowed(Deletions(tracked=100, missing=25, confirmed=25), 0.2, 30)
    assert not allowed(Deletions(tracked=100, missing=60, confirmed=60), 0.2, 30)


def test_the_event_data_names_counts_and_action() -> None:
    data = Deletions(100, 31, 30).data("patients", 0.2, "confirm with ...")
    assert data == {"resource": "patients", "tracked": 100, "missing": 31,
                    "would_delete": 30, "max_delete_fraction": 0.2,
                    "action": "confirm with ..."}
