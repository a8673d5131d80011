from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.events import canonical
from notifier.sandbox.state import Sandbox
from notifier.store.codec import LEARN_MIN, Codec, learn


def records(n: int, seed: int = 3) -> list[bytes]:
    sb = Sandbox(seed=seed)
    ids = sb.seed("patients", n, 100)
    return [canonical(sb.tables["patients"].rows[i]) for i in ids]


def test_learned_dictionary_makes_snapshots_small() -> None:
    train, test = records(40, 1), records(200, 2)
    codec = Codec(learn(train))
    sizes = [len(codec.encode(r)) for r in test]
    raw = sum(map(len, test))
    assert sum(sizes) / raw < 0.25
    assert all(codec.decode_bytes(codec.encode(r)) == r for r in test)


def test_blobs_need_their_dictionary() -> None:
    zdict = learn(records(LEARN_MIN))
    assert zdict is not None
    blob = Codec(zdict).encode(records(1, 9)[0])
    with pytest.raises(ValueError, match="dictionary"):
        Codec().decode_bytes(blob)
    assert Codec(zdict).decode(blob)["id"]


def test_too_few_samples_learn_nothing_and_static_still_works() -> None:
    assert learn(records(LEARN_MIN - 1)) is None
    codec = Codec()
    r = records(1)[0]
    blob = codec.encode(r)
    assert blob[:1] == b"\x01" and len(blob) < len(r)
    assert codec.decode_bytes(blob) == r


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=5))
def test_round_trip_any_record(value: dict[str, str]) -> None:
    raw = json.dumps(value, sort_keys=True).encode()
    for codec in (Codec(), Codec(learn(records(LEARN_MIN)))):
        assert codec.decode_bytes(codec.encode(raw)) == raw


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown snapshot format"):
        Codec().decode_bytes(b"\x09abc")


def test_a_blob_never_decodes_with_another_dictionary() -> None:
    one, other = learn(records(LEARN_MIN, 4)), learn(records(LEARN_MIN, 5))
    assert one is not None and other is not None and one != other
    blob = Codec(one).encode(records(1, 9)[0])
    with pytest.raises(ValueError, match="dictionary"):
        Codec(other).decode(blob)


def test_garbage_is_a_value_error() -> None:
    for blob in (b"\x01\xff\xff\xff", b"\x02garbage", b"\x00\xff\xfe", b"\x00[1]"):
        with pytest.raises(ValueError):
            Codec(learn(records(LEARN_MIN))).decode(blob)


def test_an_adopted_dictionary_is_pending_until_saved() -> None:
    codec = Codec()
    zdict = learn(records(LEARN_MIN))
    assert zdict is not None and codec.pending() is None
    codec.adopt(zdict)
    assert codec.pending() == zdict
    codec.saved = True
    assert codec.pending() is None
    assert Codec(zdict).pending() is None


def test_compressors_are_shared_by_dictionary_and_bounded() -> None:
    """A primed compressor (~160 kB) per resource of every practice was most of a
    practice's memory: codecs with one dictionary share one, and their number is bounded,
    while every blob still decodes with its own dictionary."""
    from notifier.store import codec as module

    records = [json.dumps({"id": i, "first_name": f"Name{i}", "active": True}).encode()
               for i in range(40)]
    dicts = [module.learn(records[i:i + 10]) for i in range(0, 30, 10)]
    assert all(d is not None for d in dicts)
    a, b = Codec(dicts[0]), Codec(dicts[0])
    assert a.encode(records[35]) == b.encode(records[35])
    assert module._learned(dicts[0]) is module._learned(bytes(dicts[0]))   # type: ignore[arg-type]
    many = [Codec(bytes([i]) * 200 + dicts[1]) for i in range(module.PRIMED_CACHE + 10)]  # type: ignore[operator]
    blobs = [c.encode(records[36]) for c in many]
    assert len(module._primed_cache) == module.PRIMED_CACHE
    assert all(c.decode_bytes(blob) == records[36] for c, blob in zip(many, blobs, strict=True))
    # The first codecs' compressors were dropped; they are made again when needed.
    assert many[0].encode(records[37]) != records[37] and \
        many[0].decode_bytes(many[0].encode(records[37])) == records[37]
    assert Codec().decode_bytes(Codec().encode(records[38])) == records[38]


def test_a_blob_remembers_when_its_record_was_seen() -> None:
    """A snapshot stamped ahead of the server's clock carries the server time at which it
    was seen (the stale-copy rule needs it); every other blob is as small as before."""
    r = records(1)[0]
    for codec in (Codec(), Codec(learn(records(LEARN_MIN)))):
        plain = codec.encode(r)
        marked = codec.encode(r, seen_at=1_795_000_000_123)
        assert codec.read(plain) == (r, None)
        assert codec.read(marked) == (r, 1_795_000_000_123)
        assert codec.decode_bytes(marked) == r and len(marked) == len(plain) + 9
    with pytest.raises(ValueError, match="snapshot"):
        Codec().read(b"\x04\x00\x01")
