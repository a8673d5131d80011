"""Counts in messages people read take the right plural."""

from notifier.core.text import plural


def test_plural() -> None:
    assert plural(1, "practice") == "1 practice"
    assert plural(2, "practice") == "2 practices"
    assert plural(0, "event") == "0 events"
    assert plural(1, "key revoked") == "1 key revoked"
    assert plural(3, "key revoked") == "3 keys revoked"
    assert plural(2, "address") == "2 addresses"
    assert plural(2, "entry", "entries") == "2 entries"
