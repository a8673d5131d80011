"""Compact snapshots: canonical JSON deflated against a per-resource dictionary.

Every tracked record lives in Redis, and a large practice has millions, so snapshots must
be small. A record deflated on its own barely shrinks (it is short and its field names are
the bulk of it); deflated against a dictionary made of real records of the same resource
it drops to about a fifth. The dictionary is learned once from the first records seen,
stored next to the snapshots, and never changes (every blob names the dictionary it
needs in its first byte).

    0x00 + canonical JSON                    (stored raw)
    0x01 + raw deflate, static dictionary    (before a dictionary was learned)
    0x02 + raw deflate, learned dictionary
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

RAW, STATIC, LEARNED = b"\x00", b"\x01", b"\x02"
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


def learn(samples: Sequence[bytes]) -> bytes | None:
    """A dictionary from canonical records of one resource, or None if too few yet."""
    if len(samples) < LEARN_MIN:
        return None
    return b"".join(samples)[-DICT_SIZE:]


class Codec:
    """Encodes and decodes one resource's snapshots. Primed compressors are reused."""

    def __init__(self, zdict: bytes | None = None) -> None:
        self._static = self._primed(_STATIC_DICT)
        self.zdict: bytes | None = None
        self._learned: Any = None
        if zdict:
            self.adopt(zdict)

    @staticmethod
    def _primed(zdict: bytes) -> Any:
        return zlib.compressobj(LEVEL, zlib.DEFLATED, -15, MEM_LEVEL,
                                zlib.Z_DEFAULT_STRATEGY, zdict)

    def adopt(self, zdict: bytes) -> None:
        self.zdict = zdict
        self._learned = self._primed(zdict)

    def encode(self, canonical: bytes) -> bytes:
        tag, primed = (LEARNED, self._learned) if self._learned else (STATIC, self._static)
        c = primed.copy()
        packed: bytes = c.compress(canonical) + c.flush()
        if len(packed) >= len(canonical):
            return RAW + canonical
        return tag + packed

    def decode_bytes(self, blob: bytes) -> bytes:
        """The canonical JSON in ``blob``."""
        tag, body = blob[:1], blob[1:]
        if tag == RAW:
            return body
        if tag == STATIC:
            return zlib.decompressobj(-15, _STATIC_DICT).decompress(body)
        if tag == LEARNED:
            if self.zdict is None:
                raise ValueError("snapshot needs the learned dictionary, which is missing")
            return zlib.decompressobj(-15, self.zdict).decompress(body)
        raise ValueError(f"unknown snapshot format {tag!r}")

    def decode(self, blob: bytes) -> dict[str, Any]:
        value = json.loads(self.decode_bytes(blob))
        if not isinstance(value, dict):
            raise ValueError("snapshot is not a JSON object")
        return value
