"""A webhook receiver on loopback that records every request and answers as a test says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.sandbox.server import AppThread


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    path: str

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    body: bytes = b""


class Receiver:
    """``behave(request, n)`` decides the reply; ``n`` counts earlier requests for that
    webhook-id. Default: 200 at once."""

    def __init__(self, behave: Callable[[Received, int], Reply] | None = None) -> None:
        self.received: list[Received] = []
        self.behave = behave or (lambda r, n: Reply())
        self._lock = threading.Lock()
        self._thread = AppThread(Starlette(routes=[
            Route("/{path:path}", self._handle, methods=["POST"])]))
        self.url = self._thread.url + "/hook"

    async def _handle(self, request: Request) -> Response:
        got = Received(time.time(), {k.lower(): v for k, v in request.headers.items()},
                       await request.body(), request.url.path)
        with self._lock:
            n = sum(1 for r in self.received
                    if r.headers.get("webhook-id") == got.headers.get("webhook-id"))
            self.received.append(got)
        reply = self.behave(got, n)
        if reply.hang:
            await anyio.sleep(reply.hang)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)

    def ids(self, ok_only: bool = False) -> list[str]:
        with self._lock:
            return [r.webhook_id for r in self.received]

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
