"""The sandbox's HTTP face: Dentally's ``/v1`` API and a ``/_sandbox`` control API.

API requests pass the same gates as the real service, in its order: User-Agent, Bearer
key (unknown, revoked or idle-expired: 401), the fixed-window rate budget (403 or 429 at
zero), injected failures, then scopes (403) and the handler. Every API response carries
``x-ratelimit-*`` headers and a ``Date`` from the sandbox's clock, which tests may move
(and skew, for the header alone, once or for good). Which filters a list honours comes from
:mod:`notifier.sandbox.api`, the sandbox's own description of Dentally.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.core.timefmt import parse_ms
from notifier.sandbox.api import ENDPOINTS, HIDDEN_APPOINTMENT_STATES
from notifier.sandbox.ledger import LedgerRequests
from notifier.sandbox.state import Key, Sandbox


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json", headers=headers)


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None
           ) -> Response:
    return _json({"error": {"type": kind, "message": message}}, status, headers)


class _Reject(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def build_app(sb: Sandbox) -> Starlette:
    """The ASGI application serving ``sb``."""

    def date_header() -> str:
        """Called once per response: consumes one of the one-shot ``date_offsets``."""
        q = sb.quirks
        ms = sb.clock.now_ms() + q.date_skew_ms
        if q.date_offsets:
            ms += int(q.date_offsets.pop(0))
        return formatdate(ms / 1000, usegmt=True)

    async def gate(request: Request) -> tuple[Key, dict[str, str]]:
        q = sb.quirks
        if q.latency:
            await anyio.sleep(q.latency)
        base = {"date": date_header()}
        if not request.headers.get("user-agent"):
            raise _Reject(_error(403, "forbidden", "A User-Agent header is required", base))
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        key = sb.keys.get(token)
        now = sb.clock.now_ms()
        if key is None or key.revoked:
            sb.rejected[token] = sb.rejected.get(token, 0) + 1
            raise _Reject(_error(401, "unauthorized", "Invalid or revoked API key", base))
        if key.last_used_ms is not None and now - key.last_used_ms > q.key_idle_expiry * 1000:
            sb.rejected[token] = sb.rejected.get(token, 0) + 1
            raise _Reject(_error(401, "unauthorized", "API key has expired", base))
        verdict = sb.admit(token, key.user_id)
        headers = {**base, **verdict.headers}
        if verdict.status != 200:
            raise _Reject(_json(verdict.body, verdict.status, headers))
        key.last_used_ms = now
        sb.requests[token] = sb.requests.get(token, 0) + 1
        sb.requests_total += 1
        if q.fail_next:
            status = q.fail_next.pop(0)
            raise _Reject(_error(status, "error", "Injected failure", headers))
        if q.error_rate and sb.rng.random() < q.error_rate:
            raise _Reject(_error(503, "unavailable", "Service temporarily unavailable",
                                 headers))
        return key, headers

    async def user(request: Request) -> Response:
        try:
            key, headers = await gate(request)
        except _Reject as r:
            return r.response
        return _json({"user": {"id": key.user_id, "first_name": "Sandbox",
                               "last_name": "User", "email": "sandbox@example.com",
                               "role": "Practice Manager"}}, headers=headers)

    async def gate_resource(request: Request) -> tuple[str, dict[str, str]]:
        """``gate`` plus the resource's existence (404) and the key's scope for it (403)."""
        resource = str(request.path_params["resource"])
        if resource not in ENDPOINTS:
            raise _Reject(_error(404, "not_found", f"Unknown resource {resource}",
                                 {"date": date_header()}))
        key, headers = await gate(request)
        if not key.allows(resource):
            raise _Reject(_error(403, "forbidden", f"Key lacks scope {resource}:read",
                                 headers))
        return resource, headers

    async def webhooks(request: Request) -> Response:
        """``GET /v1/webhooks``: the practice's Dentally webhooks (403 without the scope)."""
        try:
            key, headers = await gate(request)
        except _Reject as r:
            return r.response
        if not key.allows("webhooks"):
            return _error(403, "forbidden", "Key lacks scope webhooks:read", headers)
        return _json(sb.webhooks.listing(), headers=headers)

    async def listing(request: Request) -> Response:
        try:
            resource, headers = await gate_resource(request)
            return _list(request, resource, headers)
        except _Reject as r:
            return r.response

    def _int(request: Request, name: str, default: int, headers: dict[str, str]) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise _Reject(_error(400, "bad_request", f"{name} must be an integer",
                                 headers)) from None

    def _time(request: Request, name: str, headers: dict[str, str]) -> int | None:
        raw = request.query_params.get(name)
        if raw is None:
            return None
        try:
            return parse_ms(raw)
        except ValueError:
            raise _Reject(_error(400, "bad_request", f"{name} is not a valid time",
                                 headers)) from None

    def _list(request: Request, resource: str, headers: dict[str, str]) -> Response:
        q = sb.quirks
        honours = ENDPOINTS[resource].filters
        params = request.query_params

        def param(name: str) -> str | None:
            # Dentally silently ignores a filter the endpoint does not support.
            return params.get(name) if name in honours else None

        page = max(1, _int(request, "page", 1, headers))
        per_page = _int(request, "per_page", 25, headers)
        if per_page > 100 or per_page < 1:
            per_page = 25
        after = _time(request, "updated_after", headers) if param("updated_after") else None
        before = (_time(request, "updated_before", headers) if param("updated_before")
                  else None)
        order = params.get("sort_by", q.order)
        if order not in ("id", "updated_at"):
            order = "id"
        descending = params.get("sort_direction") == "desc"
        tests: list[Callable[[dict[str, Any]], bool]] = []
        variant: list[str] = []
        if "cancelled" in honours and param("cancelled") != "true":
            tests.append(lambda row: row.get("state") not in HIDDEN_APPOINTMENT_STATES)
            variant.append("active")
        for name, sign in (("after", 1), ("before", -1)):
            if param(name):
                bound = _time(request, name, headers)
                assert bound is not None

                def starts(row: dict[str, Any], bound: int = bound, sign: int = sign) -> bool:
                    start = row.get("start_time")
                    return isinstance(start, str) and sign * (parse_ms(start) - bound) > 0
                tests.append(starts)
                variant.append(f"{name}={bound}")
        dated_after = param("dated_after")
        if dated_after is not None:
            if len(dated_after) != 10 or dated_after[4] != "-":
                raise _Reject(_error(400, "bad_request", "dated_after must be YYYY-MM-DD",
                                     headers))
            tests.append(lambda row: str(row.get("dated_on", "")) >= dated_after)
            variant.append(f"dated_after={dated_after}")

        def keep(row: dict[str, Any]) -> bool:
            return all(t(row) for t in tests)

        offset = (page - 1) * per_page
        if q.deep_page_limit is not None and offset >= q.deep_page_limit:
            raise _Reject(_error(413, "payload_too_large", "Page too deep", headers))
        table = sb.tables[resource]
        ids = table.query(after, before, order, descending, keep if tests else None,
                          ",".join(variant) or None)
        chunk = ids[offset:offset + per_page]
        if q.unstable_rate and chunk:
            chunk = list(chunk)
            following = ids[offset + per_page:offset + 2 * per_page]
            for i in range(min(len(chunk), len(following))):
                if sb.rng.random() < q.unstable_rate:
                    # The last rows of this page and the first of the next trade places.
                    chunk[-1 - i] = following[i]
        rows = [table.rows[i] for i in chunk]
        total = len(ids)
        meta = {"total_count": total, "current_page": page,
                # Dentally's total_pages is unreliable; the sandbox's is too.
                "total_pages": max(1, -(-total // 25))}
        response = _json({resource: rows, "meta": meta}, headers=headers)
        _between_pages(resource, page, [str(r["id"]) for r in rows])
        return response

    def _between_pages(resource: str, page: int, served: list[str]) -> None:
        """Fire the one-shot writes due after this page (``Quirks.between_pages``)."""
        due = [h for h in sb.quirks.between_pages
               if h.get("resource") == resource and int(h.get("after_page", 1)) == page]
        for hook in due:
            sb.quirks.between_pages.remove(hook)
            for rid in served[:int(hook.get("delete", 0))]:
                sb.delete(resource, rid)
            for _ in range(int(hook.get("create", 0))):
                sb.create(resource)

    async def single(request: Request) -> Response:
        try:
            resource, headers = await gate_resource(request)
        except _Reject as r:
            return r.response
        row = sb.tables[resource].rows.get(request.path_params["id"])
        if row is None:
            return _error(404, "not_found", "Record not found", headers)
        return _json({ENDPOINTS[resource].singular: row}, headers=headers)

    # -- control API --------------------------------------------------------------------
    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    def known(resource: str) -> None:
        if resource not in ENDPOINTS:
            raise _Reject(_error(404, "not_found", f"Unknown resource {resource}"))

    async def control(request: Request) -> Response:
        try:
            return await _control(request)
        except _Reject as r:
            return r.response
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "bad_request", f"{type(exc).__name__}: {exc}")

    async def _control(request: Request) -> Response:
        parts = [p for p in request.url.path.split("/") if p][1:]
        method = request.method
        data = await body(request) if method in ("POST", "PATCH", "PUT") else {}
        if parts == ["reset"] and method == "POST":
            for name in list(sb.tables):
                sb.tables[name] = type(sb.tables[name])(name, sb.ledger)
            sb.limiter.clear()
            sb.requests.clear()
            return _json({"ok": True})
        if parts == ["clock"]:
            c = sb.clock
            if "offset_ms" in data:
                c.offset_ms = int(data["offset_ms"])
            if "advance_ms" in data:
                if c.frozen_ms is not None:
                    c.frozen_ms += int(data["advance_ms"])
                else:
                    c.offset_ms += int(data["advance_ms"])
            if "freeze_ms" in data:
                c.frozen_ms = None if data["freeze_ms"] is None else int(data["freeze_ms"])
            return _json({"now_ms": c.now_ms(), "offset_ms": c.offset_ms,
                          "frozen_ms": c.frozen_ms})
        if parts == ["ledger"] and method == "GET":
            since = int(request.query_params.get("since", 0))
            rsince = int(request.query_params.get("requests_since", 0))
            return _json(sb.ledger.snapshot(since, rsince))
        if parts == ["quirks"]:
            if method == "POST":
                sb.quirks.update(data)
            return _json({k: getattr(sb.quirks, k) for k in sb.quirks.__dataclass_fields__})
        if parts == ["dentally_webhooks"]:
            if method == "POST":
                return _json(sb.webhooks.configure(data))
            return _json(sb.webhooks.describe())
        if parts == ["stats"]:
            return _json({"requests": sb.requests, "rejected": sb.rejected,
                          "per_window": {str(u): {str(w): n for w, n in c.items()}
                                         for u, c in sb.limiter.per_window.items()},
                          "log": sb.limiter.log,
                          "total": sb.requests_total,
                          "now_ms": sb.clock.now_ms()})
        if parts and parts[0] == "keys":
            if len(parts) == 1 and method == "POST":
                k = sb.add_key(str(data["token"]), data.get("scopes"),
                               int(data.get("user_id", 1)))
                return _json({"token": k.token, "scopes": sorted(k.scopes)})
            if len(parts) == 3:
                key = sb.keys.get(parts[1])
                if key is None:
                    return _error(404, "not_found", "Unknown key")
                if parts[2] == "revoke":
                    key.revoked = True
                elif parts[2] == "restore":
                    key.revoked = False
                elif parts[2] == "idle":
                    key.last_used_ms = sb.clock.now_ms() - int(float(data["seconds"]) * 1000)
                elif parts[2] == "scopes":
                    key.scopes = set(data["scopes"])
                else:
                    return _error(404, "not_found", "Unknown key action")
                return _json({"token": key.token, "revoked": key.revoked,
                              "last_used_ms": key.last_used_ms})
        if parts and parts[0] == "records" and len(parts) >= 2:
            resource = parts[1]
            known(resource)
            if len(parts) == 2 and method == "GET":
                return _json({"records": list(sb.tables[resource].rows.values())})
            if len(parts) == 2 and method == "POST":
                at = data.get("at_ms")
                if "count" in data:
                    ids = sb.seed(resource, int(data["count"]),
                                  float(data.get("spread_days", 0)))
                    if at is not None:
                        for i in ids:
                            row = sb.tables[resource].rows[i]
                            stamp = sb.stamp(int(at))
                            row.update(created_at=stamp, updated_at=stamp)
                            sb.tables[resource].put(i, row, int(at))
                    return _json({"ids": ids})
                records = data.get("records") or [data.get("record") or {}]
                made = [sb.create(resource, r, None if at is None else int(at))
                        for r in records]
                return _json({"ids": [str(r["id"]) for r in made], "records": made})
            if len(parts) == 3 and parts[2] == "mutate" and method == "POST":
                table = sb.tables[resource]
                chosen = data.get("ids") or sb.rng.sample(
                    sorted(table.rows), min(int(data.get("count", 1)), len(table.rows)))
                done = [sb.update(resource, str(i)) for i in chosen]
                return _json({"ids": [str(r["id"]) for r in done if r is not None]})
            if len(parts) == 3:
                record_id = parts[2]
                if method == "GET":
                    found = sb.tables[resource].rows.get(record_id)
                    return _json({"record": found}) if found else _error(404, "not_found",
                                                                         "gone")
                if method == "PATCH":
                    at = data.pop("at_ms", None)
                    found = sb.update(resource, record_id, data or None,
                                      None if at is None else int(at))
                    return _json({"record": found}) if found else _error(404, "not_found",
                                                                         "gone")
                if method == "DELETE":
                    ok = sb.delete(resource, record_id)
                    return _json({"deleted": ok}, 200 if ok else 404)
        return _error(404, "not_found", f"No control endpoint {method} {request.url.path}")

    routes = [
        Route("/v1/user", user, methods=["GET"]),
        Route("/v1/webhooks", webhooks, methods=["GET"]),
        Route("/v1/{resource}", listing, methods=["GET"]),
        Route("/v1/{resource}/{id}", single, methods=["GET"]),
        Route("/_sandbox/{rest:path}", control, methods=["GET", "POST", "PATCH", "DELETE"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(LedgerRequests, ledger=sb.ledger)])
