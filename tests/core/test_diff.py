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


def test_a_later_stamp_alone_is_an_update() -> None:
    """Only updated_at moved on (an edit reverted between two polls, campaign seed 101, or
    a save that changed nothing): Dentally shows a new version, so it is published, with
    updated_at as the one change. The same instant written another way stores silently."""
    new = {**BASE, "updated_at": "2026-11-27T15:00:05.000+00:00"}
    change, store = diff(BASE, new)
    assert change is not None and change.kind == "updated" and store
    assert change.changes == {"updated_at": [BASE["updated_at"], new["updated_at"]]}
    same = {**BASE, "updated_at": "2026-11-27T16:00:00.000+01:00"}
    assert diff(BASE, same) == (None, True)
    assert diff(BASE, {**BASE, "updated_at": "2026-11-27T14:00:00.000+00:00"}) == (None, False)


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


def test_a_future_stamp_is_trusted_only_up_to_the_server_now() -> None:
    """A snapshot stamped an hour after the server's now (a fast app server): a real edit
    with an older stamp is published; against a snapshot stamped in the past it is a stale
    copy as before."""
    from notifier.core.timefmt import parse_ms

    now = parse_ms(str(BASE["updated_at"]))
    future = {**BASE, "updated_at": "2026-11-27T16:00:00.000+00:00"}
    edit = {**BASE, "email_address": "real@example.com",
            "updated_at": "2026-11-27T15:00:00.500+00:00"}
    change, store = diff(future, edit, server_now=now + 1000)
    assert change is not None and change.kind == "updated" and store
    assert change.changes is not None and "email_address" in change.changes
    assert diff(future, edit) == (None, False)   # no clock known: the old rule
    stale = {**BASE, "email_address": "old@example.com",
             "updated_at": "2026-11-27T14:00:00.000+00:00"}
    assert diff(BASE, stale, server_now=now + 1000) == (None, False)


def test_page_diff_applies_seed_mode_and_dedupe_keeps_the_latest() -> None:
    from notifier.core.diff import dedupe, page_diff

    newer = {**BASE, "email_address": "b@example.com",
             "updated_at": "2026-11-27T15:00:01.000+00:00"}
    rows = dedupe([newer, BASE, {**BASE, "id": 2}])
    assert [r["email_address"] for r in rows] == ["b@example.com", "a@example.com"]
    seed = page_diff(rows, [BASE, None], emit_created=False, server_now=None)
    assert seed[0].publish is not None and seed[0].publish.kind == "updated"
    assert seed[1].publish is None and seed[1].store          # first sight, silently
    emit = page_diff(rows, [BASE, None], emit_created=True, server_now=None)
    assert emit[1].publish is not None and emit[1].publish.kind == "created"


def test_a_future_stamp_stays_untrusted_once_real_time_passes_it() -> None:
    """Residual of item 5 (campaign seed 202): a snapshot stamped 5 s ahead of the server's
    clock when it was seen; an edit made 1 s later (stamped then, before the snapshot's
    stamp) is read only after real time passed that stamp. The stamp was not trustworthy
    when the snapshot was seen and never becomes so: the edit is published."""
    from notifier.core.diff import page_diff
    from notifier.core.timefmt import parse_ms

    seen = parse_ms(str(BASE["updated_at"]))
    future = {**BASE, "updated_at": "2026-11-27T15:00:05.000+00:00"}
    edit = {**BASE, "email_address": "real@example.com",
            "updated_at": "2026-11-27T15:00:01.000+00:00"}
    change, store = diff(future, edit, server_now=seen + 6000, seen_at=seen)
    assert change is not None and change.kind == "updated" and store
    # A snapshot whose stamp was not ahead when it was seen keeps the stale-copy rule.
    stale = {**BASE, "email_address": "old@example.com",
             "updated_at": "2026-11-27T14:59:59.000+00:00"}
    assert diff(BASE, stale, server_now=seen + 6000) == (None, False)
    # Which snapshots must remember when they were seen: only those stamped ahead of it.
    verdicts = page_diff([future, {**BASE, "id": 2}], [None, None], emit_created=True,
                         server_now=seen)
    assert [v.seen_at for v in verdicts] == [seen, None]
    # The remembered time goes through page_diff too.
    (verdict,) = page_diff([edit], [future], emit_created=True, server_now=seen + 6000,
                           seen_at=[seen])
    assert verdict.publish is not None and verdict.publish.kind == "updated"


def test_a_record_read_right_after_its_edit_keeps_the_stale_copy_rule() -> None:
    """Review of item 5: the server-clock estimate is a *lower* bound of the server's time
    (``Date`` is truncated to the second; the response took a while), so an ordinary
    record edited 300 ms before it was read looked stamped ahead of it and lost the
    stale-copy guard. Then B published, an older copy A (lagging replica) published as
    B->A, and B read again as A->B: one id twice in the stream. A record is marked only
    when its stamp is later than an *upper* bound of the server's time at the read."""
    from notifier.core.clock import ServerClock
    from notifier.core.diff import page_diff
    from notifier.core.timefmt import format_ms, parse_ms

    t0 = parse_ms(str(BASE["updated_at"]))
    true_offset = t0 - 1000 + 999          # the server's ms at our mono 1.0 s is t0 + 999
    latency = 0.05
    clock = ServerClock()
    for i in range(8):                      # a response a second, each 50 ms in transit
        mono = 1.0 + i
        sent = round((mono - latency) * 1000) + true_offset
        clock.observe(sent - sent % 1000, mono, latency=latency)
    mono = 9.0
    server_ms = round(mono * 1000) + true_offset
    bound = clock.upper(mono)
    assert bound is not None and bound >= server_ms
    b = {**BASE, "email_address": "b@example.com", "updated_at": format_ms(server_ms - 300)}
    a = {**BASE, "email_address": "a@example.com", "updated_at": format_ms(server_ms - 5000)}
    (verdict,) = page_diff([b], [a], emit_created=True, server_now=bound)
    assert verdict.publish is not None and verdict.seen_at is None
    # A stale copy read 100 ms later is still a stale copy: nothing published.
    later = clock.upper(mono + 0.1)
    (stale,) = page_diff([a], [b], emit_created=True, server_now=later, seen_at=[None])
    assert stale.publish is None and not stale.store
    # A record stamped clearly ahead (a fast app server, minutes) is still marked.
    ahead = {**b, "updated_at": format_ms(server_ms + 120_000)}
    (marked,) = page_diff([ahead], [None], emit_created=True, server_now=bound)
    assert marked.seen_at == bound
