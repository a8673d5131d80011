"""Dentally webhook hints: parsing, signatures, replays, proxies, coalescing, adaptation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.core import hints as h
from notifier.core.hints import Hint, HintError, Mode, Scheme


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


# -- parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "want"), [
    ({"event": "patient.updated", "object": "patient", "data": {"id": 12}},
     Hint("patients", "12", "updated")),
    ({"event": "updated", "object": "Patient", "data": {"id": 12}},
     Hint("patients", "12", "updated")),
    ({"event": "appointment_created", "data": {"id": "7"}},
     Hint("appointments", "7", "created")),
    ({"event": "PaymentDeleted", "data": {"payment": {"id": 3}}},
     Hint("payments", "3", "deleted")),
    ({"type": "patients", "action": "destroy", "id": 9}, Hint("patients", "9", "deleted")),
    ({"topic": "treatment-plan/updated", "data": {"id": 4}},
     Hint("treatment_plans", "4", "updated")),
    ({"data": {"patient": {"id": 5, "first_name": "A"}}}, Hint("patients", "5", None)),
    ({"patient": {"id": 5}}, Hint("patients", "5", None)),
    ({"resource_type": "Appointment", "resource_id": 77}, Hint("appointments", "77", None)),
    ({"object": {"type": "patient", "id": 8}, "event": "updated"},
     Hint("patients", "8", "updated")),
    ({"event": "patient.updated"}, Hint("patients", None, "updated")),
    ({"event": "appointment.updated", "data": {"appointment_id": 31}},
     Hint("appointments", "31", "updated")),
    ({"event": "created.patient", "data": {"id": 1}}, Hint("patients", "1", "created")),
])
def test_shapes(doc: object, want: Hint) -> None:
    assert h.parse_hint(body(doc)) == want


@pytest.mark.parametrize(("raw", "why"), [
    (b"not json", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "not a JSON object"),
    (b'{"event": "thing.updated"}', "no known resource"), (b"{}", "no known resource"),
])
def test_unparsable(raw: bytes, why: str) -> None:
    with pytest.raises(HintError, match=why):
        h.parse_hint(raw)


def test_known_restricts_to_the_practices_resources() -> None:
    raw = body({"event": "payment.created", "data": {"id": 1}})
    assert h.parse_hint(raw, {"payments"}).resource == "payments"
    with pytest.raises(HintError, match="not polled"):
        h.parse_hint(raw, {"patients"})


def test_booleans_and_empty_ids_are_not_ids() -> None:
    assert h.parse_hint(body({"event": "patient.updated", "data": {"id": True}})) \
        == Hint("patients", None, "updated")
    assert h.parse_hint(body({"event": "patient.updated", "data": {"id": ""}})).record_id \
        is None


@pytest.mark.parametrize("rid", ["../user", "1/2", "a b", "x" * 65, "1?q=2"])
def test_ids_unfit_for_a_path_are_dropped(rid: str) -> None:
    assert h.parse_hint(body({"event": "patient.updated", "data": {"id": rid}})).record_id \
        is None
    assert h.parse_hint(body({"event": "patient.updated", "data": {"patient_id": rid}})) \
        .record_id is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=12))
def test_any_json_parses_or_says_why(doc: object) -> None:
    try:
        hint = h.parse_hint(body(doc))
    except HintError:
        return
    assert hint.resource in h.resources.RESOURCES


# -- signatures ---------------------------------------------------------------------------

def test_hex_signature_of_the_raw_body() -> None:
    raw = b'{"event":"patient.updated"}'
    sig = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert h.sign("s3cret", raw) == sig
    assert h.verify(["s3cret"], raw, sig)
    assert h.verify(["s3cret"], raw, sig.upper())          # hex in either case
    assert h.verify(["s3cret"], raw, " sha256=" + sig)     # a common prefix is tolerated
    assert not h.verify(["s3cret"], raw + b" ", sig)       # the exact bytes are signed
    assert not h.verify(["other"], raw, sig)
    assert not h.verify(["s3cret"], raw, None)
    assert not h.verify(["s3cret"], raw, "")
    assert not h.verify(["s3cret"], raw, "zz" * 32)        # not hex
    assert not h.verify(["s3cret"], raw, sig[:-2])         # short
    assert not h.verify([], raw, sig)


def test_rotation_accepts_either_secret() -> None:
    raw = b"{}"
    assert h.verify(["new", "old"], raw, h.sign("old", raw))
    assert h.verify(["new", "old"], raw, h.sign("new", raw))


def test_base64_and_prefix_are_configurable() -> None:
    scheme = Scheme(header="X-Signature", encoding="base64", prefix="v1=")
    raw = b'{"a":1}'
    digest = hmac.new(b"k", raw, hashlib.sha256).digest()
    value = h.sign("k", raw, scheme)
    assert value == "v1=" + base64.b64encode(digest).decode()
    assert h.verify(["k"], raw, value, scheme)
    assert not h.verify(["k"], raw, digest.hex(), scheme)  # hex is not base64 here
    assert not h.verify(["k"], raw, "v1=!!!", scheme)


# -- replays ------------------------------------------------------------------------------

def test_replays_within_the_window_are_refused() -> None:
    r = h.Replays(window=600)
    assert r.first(b"a", 0.0)
    assert not r.first(b"a", 599.0)
    assert r.first(b"b", 599.0)
    assert r.first(b"a", 600.0)       # the window passed: new again


def test_replay_memory_is_bounded() -> None:
    r = h.Replays(window=600, capacity=3)
    for i in range(10):
        assert r.first(bytes([i]), 1.0)
    assert len(r._seen) <= 3


# -- proxies ------------------------------------------------------------------------------

def test_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = h.networks(["127.0.0.1", "10.0.0.0/8"])
    assert h.client_address("203.0.113.5", "1.2.3.4", trusted) == "203.0.113.5"
    assert h.client_address("127.0.0.1", "1.2.3.4", trusted) == "1.2.3.4"
    # a client's own forged entry on the left is not believed past an untrusted hop
    assert h.client_address("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1", trusted) \
        == "198.51.100.7"
    assert h.client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert h.client_address(None, "1.2.3.4", trusted) == "unknown"
    assert h.client_address("127.0.0.1", "1.2.3.4", []) == "127.0.0.1"


def test_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        h.networks(["nope"])


# -- coalescing -----------------------------------------------------------------------------

def test_at_most_one_triggered_poll_per_second() -> None:
    assert h.trigger_wait(10.0, None) == 0.0
    assert h.trigger_wait(10.0, 8.5) == 0.0
    assert h.trigger_wait(10.0, 9.6) == pytest.approx(0.6)
    assert h.trigger_wait(10.0, 10.0) == pytest.approx(1.0)


# -- adaptive interval --------------------------------------------------------------------

def test_backstop_while_hints_arrive() -> None:
    s = h.HintState("patients", backstop=300, silence_after=900)
    assert s.mode is Mode.UNKNOWN and s.interval(60) == 60
    s.hinted(0.0)
    assert s.mode is Mode.HEALTHY and s.interval(60) == 300
    assert s.interval(3600) == 3600            # never faster than the normal interval
    assert s.polled(100.0, found_changes=True) is None


def test_quiet_practice_keeps_the_backstop() -> None:
    s = h.HintState("patients", backstop=300, silence_after=900)
    s.hinted(0.0)
    assert s.polled(5000.0, found_changes=False) is None
    assert s.interval(60) == 300


def test_changes_without_hints_mean_silent_once() -> None:
    s = h.HintState("patients", backstop=300, silence_after=900)
    s.hinted(0.0)
    assert s.polled(899.0, found_changes=True) is None
    silent = s.polled(900.0, found_changes=True)
    assert silent is not None and silent.last_hint_at == 0.0 and silent.found_at == 900.0
    assert silent.data()["resource"] == "patients"
    assert s.mode is Mode.SILENT and s.interval(60) == 60
    assert s.polled(1200.0, found_changes=True) is None       # once
    s.hinted(1300.0)                                          # the webhook is back
    assert s.interval(60) == 300
    assert s.polled(1300.0 + 900, found_changes=True) is not None   # and re-armed


def test_never_hinted_is_never_silent() -> None:
    s = h.HintState("invoices", backstop=300, silence_after=900)
    assert s.polled(10_000.0, found_changes=True) is None


# -- GET /v1/webhooks -------------------------------------------------------------------

def test_webhooks_listing_is_read_tolerantly() -> None:
    hooks = h.parse_webhooks({"webhooks": [
        {"id": 1, "url": "https://x/?token=secret", "active": True, "failed_deliveries": 0,
         "successful_deliveries": 12, "last_delivered_at": "2026-11-28T03:00:00Z",
         "events": ["patient.updated"]},
        {"id": "2", "active": False, "failed_deliveries": 50},
        {"active": "yes", "failed_deliveries": "many"},
        "junk"]})
    assert [w.id for w in hooks] == ["1", "2", "2"]     # no id: its position
    assert hooks[0].successful_deliveries == 12 and hooks[0].events == ("patient.updated",)
    assert "url" not in hooks[0].as_dict()
    assert hooks[2].active is None and hooks[2].failed_deliveries is None
    assert h.inactive(hooks) == [hooks[1]]
    assert h.parse_webhooks([]) == []
    with pytest.raises(ValueError, match="webhooks"):
        h.parse_webhooks({"error": "nope"})
