"""A subscriber for the campaign: verifies every webhook and misbehaves as faults say.

Each request is recorded with what was answered and whether the daemon can have seen that
answer as a success (a 2xx sent in full well within the subscriber's timeout); a reply the
daemon gave up on is "unsure" and counts neither as received nor as a duplicate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from notifier import signing
from notifier.sandbox.server import AppThread


@dataclass
class Delivery:
    at: float
    webhook_id: str
    event_type: str
    status: int
    success: bool
    """The daemon saw a complete 2xx (answered in full, well within its timeout)."""
    problem: str | None = None
    """Empty, malformed or badly signed body."""
    done: float = 0.0
    """When the reply was (to be) sent in full."""


@dataclass
class Mode:
    """What the receiver does now; faults set these fields."""

    fail_n: int = 0
    """Answer 500 to the first ``fail_n`` attempts of each event made while set."""
    gone: bool = False
    hang: float = 0.0
    trickle: float = 0.0
    slow: float = 0.0
    failed: dict[str, int] = field(default_factory=dict)


class CampaignReceiver:
    def __init__(self, name: str, secret: str, timeout: float) -> None:
        self.name, self.secret, self.timeout = name, secret, timeout
        self.mode = Mode()
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._thread = AppThread(Starlette(routes=[
            Route("/{path:path}", self._handle, methods=["POST"])]))
        self.url = self._thread.url + f"/{name}"

    def _problem(self, headers: dict[str, str], body: bytes) -> str | None:
        if not body:
            return "empty body"
        try:
            doc = json.loads(body)
        except ValueError:
            return "body is not JSON"
        if not isinstance(doc, dict) or doc.get("id") != headers.get("webhook-id"):
            return "body id differs from webhook-id"
        if not isinstance(doc.get("type"), str) or not isinstance(doc.get("data"), dict):
            return "body lacks type or data"
        if not signing.verify([self.secret], headers, body, time.time()):
            return "bad signature"
        return None

    async def _handle(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = await request.body()
        except ClientDisconnect:   # the daemon gave up (killed, or its own timeout)
            return Response(b"", status_code=499)
        wid = headers.get("webhook-id", "")
        problem = self._problem(headers, body)
        try:
            etype = str(json.loads(body).get("type", ""))
        except (ValueError, AttributeError):
            etype = ""
        m = self.mode
        status, delay, trickle = 200, 0.0, 0.0
        if m.gone:
            status = 410
        elif m.fail_n and m.failed.get(wid, 0) < m.fail_n:
            m.failed[wid] = m.failed.get(wid, 0) + 1
            status = 500
        elif m.hang:
            delay = m.hang
        elif m.trickle:
            trickle = m.trickle
        elif m.slow:
            delay = m.slow
        total = delay + trickle
        success = 200 <= status < 300 and total < self.timeout * 0.6
        with self._lock:
            now = time.time()
            self.deliveries.append(Delivery(now, wid, etype, status, success, problem,
                                            now + total))
        if delay:
            await anyio.sleep(delay)
        if not trickle:
            return Response(b"ok" if status == 200 else b"no", status_code=status)

        async def dribble() -> AsyncIterator[bytes]:
            steps = 10
            for _ in range(steps):
                yield b"."
                await anyio.sleep(trickle / steps)

        return StreamingResponse(dribble(), status_code=status)

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def start(self) -> CampaignReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> CampaignReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
