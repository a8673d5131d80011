"""A small client for the sandbox's ``/_sandbox`` control API (tests, demo, integrators)."""

from __future__ import annotations

from typing import Any

import httpx


class SandboxControl:
    """Create, change and delete records, manage keys, move the clock, switch quirks."""

    def __init__(self, base_url: str, client: httpx.AsyncClient | None = None) -> None:
        self._own = client is None
        self._http = client or httpx.AsyncClient(timeout=30)
        self._base = base_url.rstrip("/") + "/_sandbox"

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        response = await self._http.request(method, self._base + path, json=json)
        response.raise_for_status()
        return response.json()

    async def seed(self, resource: str, count: int, spread_days: float = 0.0,
                   at_ms: int | None = None) -> list[str]:
        body: dict[str, Any] = {"count": count, "spread_days": spread_days}
        if at_ms is not None:
            body["at_ms"] = at_ms
        return list((await self._call("POST", f"/records/{resource}", body))["ids"])

    async def create(self, resource: str, **fields: Any) -> dict[str, Any]:
        out = await self._call("POST", f"/records/{resource}", {"record": fields})
        return dict(out["records"][0])

    async def update(self, resource: str, record_id: str, **fields: Any) -> dict[str, Any]:
        return dict((await self._call("PATCH", f"/records/{resource}/{record_id}", fields))
                    ["record"])

    async def mutate(self, resource: str, count: int = 1,
                     ids: list[str] | None = None) -> list[str]:
        body: dict[str, Any] = {"count": count}
        if ids is not None:
            body["ids"] = ids
        return list((await self._call("POST", f"/records/{resource}/mutate", body))["ids"])

    async def delete(self, resource: str, record_id: str) -> None:
        await self._call("DELETE", f"/records/{resource}/{record_id}")

    async def records(self, resource: str) -> list[dict[str, Any]]:
        return list((await self._call("GET", f"/records/{resource}"))["records"])

    async def clock(self, **change: Any) -> dict[str, Any]:
        return dict(await self._call("POST", "/clock", change))

    async def quirks(self, **change: Any) -> dict[str, Any]:
        return dict(await self._call("POST", "/quirks", change))

    async def add_key(self, token: str, scopes: list[str] | None = None,
                      user_id: int = 1) -> None:
        await self._call("POST", "/keys", {"token": token, "scopes": scopes,
                                           "user_id": user_id})

    async def key(self, token: str, action: str, **body: Any) -> dict[str, Any]:
        return dict(await self._call("POST", f"/keys/{token}/{action}", body))

    async def dentally_webhooks(self, **change: Any) -> dict[str, Any]:
        """Configure the sandbox's Dentally-style webhook (``url``, ``secret``,
        ``resources``, ``active``, ``faults``); no arguments: its state and send log."""
        if change:
            return dict(await self._call("POST", "/dentally_webhooks", change))
        return dict(await self._call("GET", "/dentally_webhooks"))

    async def stats(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/stats"))

    async def ledger(self, since: int = 0, requests_since: int = 0) -> dict[str, Any]:
        """Ground truth: the writes and API requests after the given sequence numbers
        (see :mod:`notifier.sandbox.ledger`)."""
        return dict(await self._call(
            "GET", f"/ledger?since={since}&requests_since={requests_since}"))

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()
