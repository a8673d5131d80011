"""Compact snapshots: canonical JSON deflated against a per-resource dictionary.

Every tracked record lives in Redis, and a large practice has millions, so snapshots must
be small. A record deflated on its own barely shrinks (it is short and its field names are
the bulk of it); deflated against a dictionary made of real records of the same resource
it drops to about a fifth. The dictionary is learned once from the first records seen,
stored next to the snapshots in the same atomic step as the first snapshots that need it,
and never changes. Every blob names what it needs: its first byte the format, and a blob
made with a learned dictionary that dictionary's id, so a blob can never be decoded with
another dictionary into garbage.

    0x00 + canonical JSON                               (stored raw)
    0x01 + raw deflate, static dictionary               (before a dictionary was learned)
    0x02 + raw deflate, learned dictionary              (older versions: no id)
    0x03 + dictionary id (4 bytes) + raw deflate, learned dictionary
    0x04 + seen-at (8 bytes, ms, signed) + one of the above

The last wraps the snapshot of a record stamped ahead of the server's clock when it was
seen: the server time it was seen at, without which the stale-copy rule (see
:mod:`notifier.core.diff`) would trust the stamp once real time passed it. Only such
records carry it, so the common snapshot is no larger.

A blob that cannot be decoded raises ValueError (the caller treats it as missing).

Memory: a primed compressor holds ~160 kB of zlib state, and there were two per resource of
every practice (most of a practice's RSS). Encoding only copies a primed compressor, so one
is shared by every codec with the same dictionary: one static compressor per process, and
the learned ones made when first needed, in a bounded cache keyed by the dictionary's bytes
(its id names it in blobs; the bytes key it here, so a CRC collision cannot mix them up).
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

RAW, STATIC, LEARNED, KEYED, SEEN = b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"
LEVEL, MEM_LEVEL = 6, 6
DICT_SIZE = 16_384
# Records needed before a dictionary is learned: fewer make a poor dictionary for good.
LEARN_MIN = 10

_STATIC_DICT = (
    b'"active":true,"address_line_1":"","archived_reason":null,"created_at":"2026-'
    b'","date_of_birth":"19","dentist_id":,"email_address":"@example.com","first_name":"'
    b'","id":,"last_name":"","metadata":{},"mobile_phone":"07","patient_id":,'
    b'"postcode":"","site_id":"","state":"Confirmed","updated_at":"2026-'
    b'T00:00:00.000+00:00","uuid":"-4","amount":".0","dated_on":"2026-'
)


PRIMED_CACHE = 64
"""Learned compressors kept primed in a process (~160 kB each); past that, the least
recently used is dropped and made again when next needed (a deflateSetDictionary)."""
_primed_cache: OrderedDict[bytes, Any] = OrderedDict()
_static_primed: Any = None


def _primed(zdict: bytes) -> Any:
    return zlib.compressobj(LEVEL, zlib.DEFLATED, -15, MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY,
                            zdict)


def _static() -> Any:
    global _static_primed
    if _static_primed is None:
        _static_primed = _primed(_STATIC_DICT)
    return _static_primed


def _learned(zdict: bytes) -> Any:
    """The shared compressor primed with ``zdict`` (only ever copied, never used)."""
    primed = _primed_cache.get(zdict)
    if primed is None:
        primed = _primed_cache[zdict] = _primed(zdict)
        while len(_primed_cache) > PRIMED_CACHE:
            _primed_cache.popitem(last=False)
    else:
        _primed_cache.move_to_end(zdict)
    return primed


def learn(samples: Sequence[bytes]) -> bytes | None:
    """A dictionary from canonical records of one resource, or None if too few yet."""
    if len(samples) < LEARN_MIN:
        return None
    return b"".join(samples)[-DICT_SIZE:]


class Codec:
    """Encodes and decodes one resource's snapshots. Primed compressors are shared."""

    def __init__(self, zdict: bytes | None = None) -> None:
        """``zdict``: the stored dictionary, if any."""
        self.zdict: bytes | None = None
        self.zid = b""
        self.saved = True
        """False while the adopted dictionary may not be stored yet: every commit of
        snapshots then carries it (:meth:`pending`) until one succeeds."""
        if zdict:
            self.adopt(zdict, saved=True)

    def adopt(self, zdict: bytes, saved: bool = False) -> None:
        self.zdict = zdict
        self.zid = dictionary_id(zdict)
        self.saved = saved

    def pending(self) -> bytes | None:
        """The dictionary to store with the next commit of snapshots, until one succeeded."""
        return None if self.saved else self.zdict

    def encode(self, canonical: bytes, seen_at: int | None = None) -> bytes:
        """The blob for ``canonical``; ``seen_at`` (server ms) is stored with it if given."""
        if seen_at is not None:
            return SEEN + seen_at.to_bytes(8, "big", signed=True) + self.encode(canonical)
        tag, primed = ((KEYED + self.zid, _learned(self.zdict)) if self.zdict
                       else (STATIC, _static()))
        c = primed.copy()
        packed: bytes = c.compress(canonical) + c.flush()
        if len(packed) + len(tag) - 1 >= len(canonical):
            return RAW + canonical
        return tag + packed

    def read(self, blob: bytes) -> tuple[bytes, int | None]:
        """The canonical JSON in ``blob``, and the server time it was seen at if stored."""
        if blob[:1] != SEEN:
            return self.decode_bytes(blob), None
        if len(blob) < 10 or blob[9:10] == SEEN:
            raise ValueError("snapshot with a seen-at time is truncated or nested")
        return self.decode_bytes(blob[9:]), int.from_bytes(blob[1:9], "big", signed=True)

    def decode_bytes(self, blob: bytes) -> bytes:
        """The canonical JSON in ``blob``."""
        tag, body = blob[:1], blob[1:]
        if tag == SEEN:
            return self.read(blob)[0]
        if tag == RAW:
            return body
        if tag == STATIC:
            try:
                return zlib.decompressobj(-15, _STATIC_DICT).decompress(body)
            except zlib.error as exc:
                raise ValueError(f"snapshot does not inflate: {exc}") from None
        if tag in (LEARNED, KEYED):
            if tag == KEYED:
                zid, body = body[:4], body[4:]
                if zid != self.zid:
                    raise ValueError(f"snapshot needs dictionary {zid.hex()}, which is not "
                                     "stored")
            if self.zdict is None:
                raise ValueError("snapshot needs the learned dictionary, which is missing")
            try:
                return zlib.decompressobj(-15, self.zdict).decompress(body)
            except zlib.error as exc:
                raise ValueError(f"snapshot does not inflate: {exc}") from None
        raise ValueError(f"unknown snapshot format {tag!r}")

    def decode(self, blob: bytes) -> dict[str, Any]:
        """The record in ``blob``; ValueError if it cannot be read back (garbage included)."""
        try:
            value = json.loads(self.decode_bytes(blob))
        except UnicodeDecodeError as exc:
            raise ValueError(f"snapshot is not UTF-8: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("snapshot is not a JSON object")
        return value


def dictionary_id(zdict: bytes) -> bytes:
    """4 bytes naming a dictionary (CRC-32), stored in every blob made with it."""
    return zlib.crc32(zdict).to_bytes(4, "big")
