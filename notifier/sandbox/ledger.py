"""The sandbox's ground truth: every write it applied and every API request it received.

A fault campaign compares this with what the notifier published. Each create, update and
delete of a record is one :class:`Write` (in the order applied, numbered by ``seq``) with
the record's content hash, so a checker can tell which versions of a record existed and
which one is the last. Each request to the ``/v1`` API is one :class:`Request` (wall time,
key, path, status): enough to count a key's use per rate window and its idle gaps.

Kept apart from the tables and the web layer: the sandbox calls :meth:`Ledger.write` where
it changes a row and :meth:`Ledger.request` where it answers, and nothing else here knows
about either. Bounded: the oldest entries go once ``limit`` is reached (``dropped`` says how
many), so a long-running sandbox does not grow without end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


def content_hash(record: Any) -> str:
    """SHA-256 (hex, 32 digits) of the record's canonical JSON: sorted keys, no spaces.
    A consumer hashing the ``record`` of an event the same way gets the same value."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # JSON may carry a lone UTF-16 surrogate ("\ud83d": an emoji cut in two upstream);
    # the sandbox serves whatever JSON Dentally could, so it must hash one too.
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Write:
    seq: int
    at: float
    """Wall time (s) when the sandbox applied it."""
    resource: str
    record_id: str
    updated_ms: int | None
    """The row's ``updated_at`` (ms), None for a delete."""
    hash: str | None
    """:func:`content_hash` of the row written, None for a delete."""
    deleted: bool


@dataclass(frozen=True)
class Request:
    seq: int
    at: float
    token: str
    path: str
    status: int


class Ledger:
    def __init__(self, limit: int = 1_000_000, wall: Callable[[], float] = time.time) -> None:
        self.writes: deque[Write] = deque(maxlen=limit)
        self.requests: deque[Request] = deque(maxlen=limit)
        self._wall = wall
        self._seq = 0
        self._rseq = 0

    def write(self, resource: str, record_id: str, row: dict[str, Any] | None,
              updated_ms: int | None) -> None:
        """A row was stored (``row``) or deleted (``row`` None)."""
        self._seq += 1
        self.writes.append(Write(self._seq, self._wall(), resource, record_id,
                                 updated_ms if row is not None else None,
                                 content_hash(row) if row is not None else None,
                                 row is None))

    def request(self, token: str, path: str, status: int) -> None:
        self._rseq += 1
        self.requests.append(Request(self._rseq, self._wall(), token, path, status))

    def clear(self) -> None:
        self.writes.clear()
        self.requests.clear()

    def snapshot(self, since: int = 0, requests_since: int = 0) -> dict[str, Any]:
        """The entries after the given sequence numbers, as JSON-ready dicts."""
        return {"writes": [asdict(w) for w in self.writes if w.seq > since],
                "requests": [asdict(r) for r in self.requests if r.seq > requests_since],
                "seq": self._seq, "requests_seq": self._rseq}


class LedgerRequests:
    """ASGI middleware: every ``/v1`` request into ``ledger`` with the status answered."""

    def __init__(self, app: Any, ledger: Ledger) -> None:
        self.app, self.ledger = app, ledger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = str(scope.get("path", ""))
        if scope.get("type") != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""

        async def sending(message: Any) -> None:
            if message.get("type") == "http.response.start":
                self.ledger.request(token, path, int(message["status"]))
            await send(message)

        await self.app(scope, receive, sending)
