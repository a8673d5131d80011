from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.core.diff import diff, field_changes

BASE = {"id": 1, "email_address": "a@example.com", "active": True, "dentist_id": 3,
        "updated_at": "2026-11-27T15:00:00.000+00:00"}


def test_new_record_is_created() -> None:
    change, store = diff(None, BASE)
    assert change is not None and change.kind == "created" and store


def test_identical_reread_is_nothing() -> None:
    assert diff(BASE, dict(BASE)) == (None, False)


def test_changed_field_is_updated_with_old_and_new() -> None:
    new = {**BASE, "email_address": "b@example.com",
           "updated_at": "2026-11-27T15:00:01.000+00:00"}
    change, store = diff(BASE, new)
    assert change is not None and change.kind == "updated" and store
    assert change.changes == {
        "email_address": ["a@example.com", "b@example.com"],
        "updated_at": ["2026-11-27T15:00:00.000+00:00", "2026-11-27T15:00:01.000+00:00"],
    }


def test_touch_stores_silently() -> None:
    new = {**BASE, "updated_at": "2026-11-27T15:00:05.000+00:00"}
    assert diff(BASE, new) == (None, True)


def test_stale_copy_is_ignored_even_with_other_offset() -> None:
    newer = {**BASE, "email_address": "b@example.com",
             "updated_at": "2026-11-27T16:00:00.000+01:00"}  # 15:00 UTC: same instant
    assert diff(BASE, newer)[0] is not None
    stale = {**BASE, "email_address": "old@example.com",
             "updated_at": "2026-11-27T15:59:59.999+01:00"}
    assert diff(BASE, stale) == (None, False)


def test_type_change_is_a_change() -> None:
    assert field_changes({"x": 1}, {"x": True}) == {"x": [1, True]}
    assert field_changes({"x": 1}, {"x": 1.0}) == {"x": [1, 1.0]}


def test_added_and_removed_fields() -> None:
    assert field_changes({"a": 1, "gone": 2}, {"a": 1, "new": 3}) == {
        "new": [None, 3], "gone": [2, None]}


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(
                              st.text(max_size=3), c, max_size=3), max_leaves=8)
record = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), json_value, max_size=4)


@settings(deadline=None)
@given(record, record)
def test_changes_rebuild_the_new_record(old: dict, new: dict) -> None:
    changes = field_changes(old, new)
    rebuilt = dict(old)
    for key, (before, after) in changes.items():
        assert old.get(key) == before or (key not in old and before is None)
        if key in new:
            rebuilt[key] = after
        else:
            del rebuilt[key]
    assert rebuilt == new
