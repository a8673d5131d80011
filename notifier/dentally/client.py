"""A thin httpx adapter for the Dentally API: headers, pages, and errors as one tree.

It makes exactly one request per call and decides nothing about retrying: the poller
does, from the exception type. Every response's ``Date`` feeds the server clock and its
``x-ratelimit-*`` headers the rate state. The key only ever travels in the Authorization
header; no message built here contains it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from notifier import __version__
from notifier.core.budget import Action, Answer, Priority, Refusal, classify
from notifier.core.clock import ServerClock
from notifier.core.resources import Resource
from notifier.core.retry import parse_retry_after
from notifier.core.timefmt import format_ms
from notifier.dentally.pacer import Pacer
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


class DentallyClient:
    """One practice's connection to Dentally. Close it with ``aclose``."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 pacer: Pacer | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = ServerClock()
        self.rate = RateState(None, None, None)
        self.requests = 0
        self.last_success: float | None = None
        """Unix time of the last 2xx: what keeps the key alive."""
        self.rejected = False
        """Set by a 401: no further request is made with this key except ``probe`` ones."""
        self.pacer = pacer
        """The key's rate budget (shared by every client of the key); None: unpaced, and a
        rate refusal raises RateLimited at once."""
        self._mono = monotonic
        self._wall = wall
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json",
                     "Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
            transport=transport,
            follow_redirects=False,
        )

    def set_key(self, api_key: str) -> None:
        self._http.headers["Authorization"] = f"Bearer {api_key}"

    async def aclose(self) -> None:
        await self._http.aclose()

    def server_now(self) -> int | None:
        """The server's time in ms, estimated from the last ``Date`` header."""
        return self.clock.now(self._mono())

    async def get(self, path: str, params: dict[str, str] | None = None, *,
                  probe: bool = False, bulk: bool = False) -> Any:
        """GET ``/v1{path}`` and return its JSON body, or raise a DentallyError.

        After a 401 every call fails at once without a request (no retry storm on a dead
        key) unless it is a ``probe``. With a pacer, a rate refusal (429, or the hourly
        cap's 403) is not an error: the same request is sent again when the budget allows,
        so a caller reading a window keeps its place in it.
        """
        what = f"GET {path}"
        priority = (Priority.KEY if path == "/user" else
                    Priority.BULK if bulk else Priority.STEADY)
        while True:
            if self.rejected and not probe:
                raise AuthError(f"{what}: not sent, the key was rejected")
            sent_at = await self.pacer.slot(priority) if self.pacer is not None else 0.0
            self.requests += 1
            try:
                response = await self._http.get("/v1" + path, params=params)
            except httpx.TimeoutException:
                raise TransientError(f"{what}: timed out") from None
            except httpx.TransportError as exc:
                raise TransientError(f"{what}: {type(exc).__name__}") from None
            answer = self._observe(response)
            if self.pacer is not None and \
                    self.pacer.answered(sent_at, answer) is Action.RETRY:
                continue
            status = response.status_code
            if 200 <= status < 300:
                self.last_success = self._wall()
                self.rejected = False
                try:
                    return response.json()
                except ValueError:
                    raise MalformedResponse(f"{what}: {status} body is not JSON",
                                            status=status) from None
            raise self._error(what, response, answer)

    def _observe(self, response: httpx.Response) -> Answer:
        """Feed the server clock from ``Date``; read what the response says of the budget,
        its reset converted to our clock by the server clock's estimate (a lower bound of
        the server's time: the converted reset is late, never early)."""
        now = self._wall()
        date = response.headers.get("date")
        if date:
            try:
                ms = int(parsedate_to_datetime(date).timestamp() * 1000)
                self.clock.observe(ms, self._mono())
            except (TypeError, ValueError):
                pass
        h = response.headers
        reset = _int_header(h, "x-ratelimit-reset")
        server_ms = self.clock.now(self._mono())
        reset_at = None if reset is None else (
            now + reset - server_ms / 1000 if server_ms is not None else float(reset))
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
        if status == 401:
            self.rejected = True
            return AuthError(message, status=status)
        if classify(answer) is not Refusal.NONE:
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
        body = await self.get(path, params, bulk=bulk)
        return parse_page(resource.name, body, f"GET {path} page {page}")

    async def fetch(self, resource: Resource, record_id: str) -> dict[str, Any]:
        path = f"/{resource.name}/{record_id}"
        body = await self.get(path, bulk=True)
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
