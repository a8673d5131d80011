"""A thin httpx adapter for the Dentally API: headers, pages, and errors as one tree.

It decides nothing about retrying, except that a rate refusal is sent again once the
key's pacer allows (see :mod:`notifier.dentally.pacer`); the poller decides the rest, from
the exception type. Every response's ``Date`` feeds the server clock and its
``x-ratelimit-*`` headers the rate state. The key only ever travels in the Authorization
header; no message built here contains it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import anyio
import httpx

from notifier import __version__
from notifier.core.budget import Action, Answer, Priority, Refusal, classify
from notifier.core.clock import ServerClock
from notifier.core.keylife import Outcome
from notifier.core.keylife import classify as classify_outcome
from notifier.core.resources import Resource
from notifier.core.retry import parse_retry_after
from notifier.core.timefmt import format_ms
from notifier.dentally.pacer import HEARTBEAT, Pacer
from notifier.errors import (
    AuthError,
    BadRequest,
    DentallyError,
    MalformedResponse,
    NotFound,
    PageTooDeep,
    RateLimited,
    ScopeError,
    TransientError,
)

USER_AGENT = f"dentally-notifier/{__version__} (+https://pypi.org/project/dentally-notifier/)"

Gate = Callable[[bool], "float | None"]
"""Asked before each request with ``probe``: None refuses it (the key was rejected: only
probes go out), else the seconds it must wait."""

Observer = Callable[[Outcome, bool, "str | None", "float | None", str], None]
"""Told every response's class: (outcome, probe, resource, reset_at, reason). A rate
refusal that the pacer sends again is the budget's business and is not told."""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total_count: int | None


@dataclass(frozen=True)
class RateState:
    limit: int | None
    remaining: int | None
    reset_at: float | None
    """Unix time at which the window refills."""


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


HOST_CONNECTIONS = 32
"""Requests in flight at once to one Dentally host, for the whole process (every practice
on that host shares them): a poll is one short request, so a few dozen carry a thousand
practices, and the sockets stay few whatever the practice count."""


def no_cookies() -> CookieJar:
    """A jar that keeps no cookie: the API authenticates by key alone, and a client is
    shared by every practice on a host, so a cookie one key was given (a load balancer's
    stickiness, a session) would go out with the others' keys."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class HostPools:
    """One HTTP connection pool per Dentally host, shared by every practice's client.

    A pool per practice cost a socket or more and about 0.9 MB (httpx's client and its TLS
    context) for every practice. Requests wait for a slot in our own limiter, never in
    httpcore's pool queue: httpcore 1.0.x leaks a pool slot when a request waiting there is
    cancelled (encode/httpcore #1093), and a leak in a shared pool would starve every
    practice. The pool is sized above the limiter so that httpcore never queues."""

    def __init__(self, max_connections: int = HOST_CONNECTIONS,
                 transport: Callable[[], httpx.AsyncBaseTransport | None] = lambda: None
                 ) -> None:
        self.max_connections = max_connections
        self._transport = transport
        self._hosts: dict[tuple[str, str, int | None], tuple[httpx.AsyncClient,
                                                             anyio.CapacityLimiter]] = {}

    def get(self, base_url: str) -> tuple[httpx.AsyncClient, anyio.CapacityLimiter]:
        """The shared client of ``base_url``'s host, and the limiter of its slots."""
        url = httpx.URL(base_url)
        host = (url.scheme, url.host, url.port)
        if host not in self._hosts:
            n = self.max_connections
            self._hosts[host] = (httpx.AsyncClient(
                limits=httpx.Limits(max_connections=n + 8, max_keepalive_connections=n),
                transport=self._transport(), follow_redirects=False,
                cookies=no_cookies()),
                anyio.CapacityLimiter(n))
        return self._hosts[host]

    @property
    def hosts(self) -> int:
        return len(self._hosts)

    async def aclose(self) -> None:
        for client, _ in self._hosts.values():
            await client.aclose()
        self._hosts.clear()


class DentallyClient:
    """One practice's connection to Dentally. Close it with ``aclose``.

    With ``pools``, its requests go through the host's shared pool (the daemon: one pool
    per host for every practice); without, it has a small pool of its own."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 pacer: Pacer | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 pools: HostPools | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = ServerClock()
        self.rate = RateState(None, None, None)
        self.requests = 0
        self.last_success: float | None = None
        """Unix time of the last 2xx: what keeps the key alive."""
        self.gate: Gate | None = None
        """The key's lifecycle decides what may be sent (core.keylife); without one, the
        client sends whatever it is asked to."""
        self.observer: Observer | None = None
        self.pacer = pacer
        """The key's rate budget (shared by every client of the key); None: unpaced, and a
        rate refusal raises RateLimited at once."""
        self._mono = monotonic
        self._wall = wall
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json",
                         "Authorization": f"Bearer {api_key}"}
        self._timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        self._limiter: anyio.CapacityLimiter | None = None
        self._owned = pools is None
        if pools is None:
            self._http = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
                transport=transport, follow_redirects=False, cookies=no_cookies())
        else:
            self._http, self._limiter = pools.get(self.base_url)

    def set_key(self, api_key: str) -> None:
        self._headers["Authorization"] = f"Bearer {api_key}"

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def _send(self, path: str, params: dict[str, str] | None) -> httpx.Response:
        url = self.base_url + "/v1" + path
        if self._limiter is None:
            return await self._http.get(url, params=params, headers=self._headers,
                                        timeout=self._timeout)
        async with self._limiter:
            return await self._http.get(url, params=params, headers=self._headers,
                                        timeout=self._timeout)

    def server_now(self) -> int | None:
        """The server's time in ms, estimated from the last ``Date`` header."""
        return self.clock.now(self._mono())

    def server_upper(self) -> int | None:
        """The latest the server's time can be now (ms; ``ServerClock.upper``): taken
        after a response, no row in it was read later. None before any ``Date``."""
        return self.clock.upper(self._mono())

    async def _admit(self, what: str, probe: bool) -> None:
        """The gate's word: refuse (a rejected key, no retry storm) or wait."""
        while self.gate is not None:
            wait = self.gate(probe)
            if wait is None:
                raise AuthError(f"{what}: not sent, the key was rejected")
            if wait <= 0:
                return
            beat = HEARTBEAT.get()
            if beat is not None:
                beat()
            await anyio.sleep(min(wait, 10.0))

    async def get(self, path: str, params: dict[str, str] | None = None, *,
                  probe: bool = False, bulk: bool = False, resource: str | None = None
                  ) -> Any:
        """GET ``/v1{path}`` and return its JSON body, or raise a DentallyError.

        The gate (the key's lifecycle) may refuse the call without a request: after a
        401 nothing but a ``probe`` goes out. With a pacer, a rate refusal (429, or the
        hourly cap's 403) is not an error: the same request is sent again when the
        budget allows, so a caller reading a window keeps its place in it.
        """
        what = f"GET {path}"
        priority = (Priority.KEY if path == "/user" else
                    Priority.BULK if bulk else Priority.STEADY)
        while True:
            await self._admit(what, probe)
            sent_at = await self.pacer.slot(priority) if self.pacer is not None else 0.0
            self.requests += 1
            asked = self._mono()
            try:
                response = await self._send(path, params)
            except httpx.TimeoutException:
                self._tell(Outcome.FAILED, probe, resource, None, "timed out")
                raise TransientError(f"{what}: timed out") from None
            except httpx.TransportError as exc:
                self._tell(Outcome.FAILED, probe, resource, None, type(exc).__name__)
                raise TransientError(f"{what}: {type(exc).__name__}") from None
            answer = self._observe(response, self._mono() - asked)
            if self.pacer is not None and \
                    self.pacer.answered(sent_at, answer) is Action.RETRY:
                continue
            status = response.status_code
            if 200 <= status < 300:
                self.last_success = self._wall()
                self._tell(Outcome.OK, probe, resource, None, "")
                try:
                    return response.json()
                except ValueError:
                    raise MalformedResponse(f"{what}: {status} body is not JSON",
                                            status=status) from None
            error = self._error(what, response, answer)
            outcome = {AuthError: Outcome.UNAUTHORIZED, RateLimited: Outcome.RATE_LIMITED,
                       ScopeError: Outcome.FORBIDDEN}.get(type(error), Outcome.FAILED)
            self._tell(outcome, probe, resource, getattr(error, "reset_at", None),
                       str(error))
            raise error

    def _tell(self, outcome: Outcome, probe: bool, resource: str | None,
              reset_at: float | None, reason: str) -> None:
        if self.observer is not None:
            self.observer(outcome, probe, resource, reset_at, reason)

    def _observe(self, response: httpx.Response, latency: float = 0.0) -> Answer:
        """Feed the server clock from ``Date`` (with the request's round trip, ``latency``
        s); read what the response says of the budget, its reset put on our clock by
        ``ServerClock.to_local`` (the closest lower bound of the server's time: the reset
        is late by a fraction of a second, never early)."""
        now = self._wall()
        date = response.headers.get("date")
        if date:
            try:
                ms = int(parsedate_to_datetime(date).timestamp() * 1000)
                self.clock.observe(ms, self._mono(), latency)
            except (TypeError, ValueError):
                pass
        h = response.headers
        reset = _int_header(h, "x-ratelimit-reset")
        local = None if reset is None else self.clock.to_local(reset * 1000, self._mono(), now)
        reset_at = None if reset is None else local if local is not None else float(reset)
        if "x-ratelimit-remaining" in h:
            self.rate = RateState(_int_header(h, "x-ratelimit-limit"),
                                  _int_header(h, "x-ratelimit-remaining"), reset_at)
        kind, message = _error_detail(response) if response.status_code >= 400 else ("", "")
        return Answer(response.status_code, limit=_int_header(h, "x-ratelimit-limit"),
                      remaining=_int_header(h, "x-ratelimit-remaining"), reset_at=reset_at,
                      retry_after=parse_retry_after(h.get("retry-after"), now),
                      error_type=kind, error_message=message)

    def _error(self, what: str, response: httpx.Response, answer: Answer) -> DentallyError:
        status = response.status_code
        detail = answer.error_message[:200]
        message = f"{what}: {status}" + (f" {detail}" if detail else "")
        outcome = classify_outcome(status, answer.error_type, detail, answer.remaining)
        if outcome is Outcome.UNAUTHORIZED:
            return AuthError(message, status=status)
        if outcome is Outcome.RATE_LIMITED or classify(answer) is not Refusal.NONE:
            wait = answer.retry_after
            reset = self._wall() + wait if wait is not None else answer.reset_at
            return RateLimited(message, status=status, reset_at=reset)
        if status == 403:
            return ScopeError(message, status=status)
        if status == 404:
            return NotFound(message, status=status)
        if status == 413:
            return PageTooDeep(message, status=status)
        if status >= 500 or status == 408:
            return TransientError(message, status=status)
        return BadRequest(message, status=status)

    async def user(self, probe: bool = False) -> dict[str, Any]:
        body = await self.get("/user", probe=probe)
        if not isinstance(body, dict) or not isinstance(body.get("user"), dict):
            raise MalformedResponse("GET /user: no 'user' object in the body")
        return dict(body["user"])

    async def page(self, resource: Resource, *, page: int, per_page: int,
                   updated_after: int | None = None, updated_before: int | None = None,
                   dated_after: str | None = None, bulk: bool = False) -> Page:
        """One page of a list. Bounds are server-clock ms, sent as UTC ISO 8601."""
        params = {"page": str(page), "per_page": str(per_page), **dict(resource.params)}
        if updated_after is not None:
            params["updated_after"] = format_ms(updated_after)
        if updated_before is not None and resource.closed_windows:
            params["updated_before"] = format_ms(updated_before)
        if dated_after is not None:
            params["dated_after"] = dated_after
        path = f"/{resource.name}"
        body = await self.get(path, params, bulk=bulk, resource=resource.name)
        return parse_page(resource.name, body, f"GET {path} page {page}")

    async def fetch(self, resource: Resource, record_id: str) -> dict[str, Any]:
        path = f"/{resource.name}/{record_id}"
        body = await self.get(path, bulk=True, resource=resource.name)
        if not isinstance(body, dict) or not isinstance(body.get(resource.singular), dict):
            raise MalformedResponse(f"GET {path}: no {resource.singular!r} object in the body")
        return dict(body[resource.singular])


def _error_detail(response: httpx.Response) -> tuple[str, str]:
    """The API's own error type and message, if the body has them:
    ``{"error": {"type": ..., "message": ...}}``, ``{"error": "..."}`` or ``{"message": ...}``.
    """
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    err = body.get("error", body.get("message", ""))
    kind: Any = ""
    if isinstance(err, dict):
        kind, err = err.get("type", ""), err.get("message", "")
    return (kind if isinstance(kind, str) else "")[:100], \
        (err if isinstance(err, str) else "")[:200]


def parse_page(key: str, body: Any, what: str) -> Page:
    """Check a list envelope ``{"<key>": [...], "meta": {...}}``; name what is wrong."""
    if not isinstance(body, dict):
        raise MalformedResponse(f"{what}: body is not a JSON object")
    rows = body.get(key)
    if not isinstance(rows, list):
        raise MalformedResponse(f"{what}: no {key!r} list in the body")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise MalformedResponse(f"{what}: {key}[{i}] is not an object")
        rid = row.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int | str) or rid == "":
            raise MalformedResponse(f"{what}: {key}[{i}] has no usable 'id'")
    meta = body.get("meta")
    total = None
    if isinstance(meta, dict):
        for name in ("total_count", "total"):
            value = meta.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                total = value
                break
    return Page(rows, total)
