"""One subscriber's HTTP side: signed POSTs over pooled keep-alive connections.

Each attempt is bounded as a whole by ``timeout``, from the address check and the connect
to the last byte of the reply: httpx's own timeouts apply to each read, so a receiver that
trickles one byte a second would otherwise hold the attempt (and one of the subscriber's
``max_in_flight`` slots) for ever.

The deadline is a cancel scope, armed only once the request is on its connection. A
request cancelled between the pool assigning it a connection and using it leaves that
connection in the pool for ever (httpcore 1.0.x, encode/httpcore #1093: the slots leak
until every request fails with ``PoolTimeout``); a soak test hit exactly that with a
deadline around the whole request. So the scope's deadline stays unset until httpcore's
first trace event of the request (``connect_tcp.started`` on a new connection,
``send_request_headers.started`` on a kept-alive one), which comes after that window;
cancelling from then on closes the connection cleanly. Before that, the wait for a pool
connection is bounded by the pool timeout (and never happens: the pool has exactly
``max_in_flight`` connections, and the worker never runs more attempts at once). Should
the pool still ever report ``PoolTimeout``, the client is replaced.

Each attempt reads at most ``BODY_LIMIT`` bytes of the reply and never follows redirects.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import httpx

from notifier import __version__, signing
from notifier.core.retry import parse_retry_after
from notifier.delivery.safety import URLGuard
from notifier.errors import UnsafeURL

BODY_LIMIT = 1024
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
USER_AGENT = f"dentally-notifier/{__version__} (webhooks)"


@dataclass(frozen=True)
class Attempt:
    status: int | None
    latency: float
    error: str = ""
    retry_after: float | None = None
    unsafe: bool = False


class Sender:
    def __init__(self, url: str, secrets: Sequence[str], *, timeout: float,
                 max_in_flight: int, allow_private: bool,
                 transport: httpx.AsyncBaseTransport | None = None,
                 wall: Callable[[], float] = time.time,
                 headers: Mapping[str, str] | None = None,
                 content_type: str = "application/json") -> None:
        """``headers``: the subscriber's own (an auth header: treated as secrets, never
        logged); ``content_type``: CloudEvents structured mode has its own."""
        for s in secrets:
            signing.secret_key(s)  # fail at start on a malformed secret, naming no secret
        self.url = url
        self.secrets = list(secrets)
        self.guard = URLGuard(url, allow_private)
        self._wall = wall
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._content_type = content_type
        self._transport = transport
        self.client = self._client()

    def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.max_in_flight,
                              max_keepalive_connections=self.max_in_flight)
        # httpx writes a POST's headers and body separately; without TCP_NODELAY, Nagle's
        # algorithm holds the body until the receiver's delayed ACK, 40 ms later.
        transport = self._transport or httpx.AsyncHTTPTransport(limits=limits,
                                                                socket_options=NODELAY)
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), limits=limits, follow_redirects=False,
            headers=self._headers, transport=transport)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, event_id: str, payload: bytes) -> Attempt:
        """One attempt, over within ``timeout`` whatever the receiver does."""
        started = time.monotonic()
        scope = anyio.CancelScope()
        deadline = anyio.current_time() + self.timeout

        async def arm(name: str, info: dict[str, object]) -> None:
            if scope.deadline == math.inf:  # the request is on its connection now
                scope.deadline = deadline

        with scope:
            attempt = await self._send(event_id, payload, started, arm)
        if scope.cancelled_caught:
            return Attempt(None, time.monotonic() - started,
                           f"timed out (no complete reply within {self.timeout:g}s)")
        if attempt.error.startswith("PoolTimeout") and self._transport is None:
            old, self.client = self.client, self._client()
            with anyio.CancelScope(shield=True):
                await old.aclose()
        return attempt

    async def _send(self, event_id: str, payload: bytes, started: float,
                    trace: Callable[[str, dict[str, object]], Awaitable[None]]) -> Attempt:
        try:
            await self.guard.check()
        except UnsafeURL as exc:
            return Attempt(None, 0.0, str(exc), unsafe=True)
        headers = signing.headers(self.secrets, event_id, int(self._wall()), payload)
        headers["content-type"] = self._content_type
        try:
            async with self.client.stream("POST", self.url, content=payload, headers=headers,
                                          extensions={"trace": trace}) as response:
                read = 0
                with contextlib.suppress(httpx.StreamConsumed):  # a body already in memory
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= BODY_LIMIT:
                            break
                status = response.status_code
                retry_after = None
                if status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("retry-after"),
                                                    self._wall())
        except httpx.PoolTimeout:
            return Attempt(None, time.monotonic() - started, "PoolTimeout: no free connection")
        except httpx.TimeoutException:
            return Attempt(None, time.monotonic() - started, "timed out")
        except httpx.TransportError as exc:
            return Attempt(None, time.monotonic() - started,
                           f"{type(exc).__name__}: {exc}"[:200])
        error = "" if 200 <= status < 300 else f"HTTP {status}"
        return Attempt(status, time.monotonic() - started, error, retry_after)
