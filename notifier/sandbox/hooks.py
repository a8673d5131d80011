"""The sandbox sends Dentally-style webhooks, with switchable faults.

Dentally sends webhooks for patients, appointments and payments (created, updated,
deleted) to a URL a practice admin configures; their shape and signature are
undocumented, so the sandbox sends what one integration observed: a body
``{"event": "patient.updated", "object": "patient", "data": {...record...}}`` signed in
``X-Dentally-Signature`` with the hex HMAC-SHA256 of the raw body. Faults make it as
unreliable as integrators report: ``drop_rate``, ``delay`` (seconds), ``duplicate_rate``,
``bad_signature_rate`` and ``reorder`` (each batch of writes sent newest first). As
Dentally does, a webhook is switched off after 50 consecutive failed deliveries.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from notifier.core.hints import Scheme, sign

HINTED = ("patients", "appointments", "payments")
DISABLE_AFTER = 50
SINGULAR = {"patients": "patient", "appointments": "appointment", "payments": "payment"}


@dataclass
class Faults:
    drop_rate: float = 0.0
    delay: float = 0.0
    duplicate_rate: float = 0.0
    bad_signature_rate: float = 0.0
    reorder: bool = False
    reorder_window: float = 0.05
    """With ``reorder``: how long writes gather into one batch before it is sent."""

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise KeyError(key)
            setattr(self, key, type(getattr(self, key))(value))


@dataclass
class Hook:
    url: str | None = None
    secret: str = "sandbox-webhook-secret"
    resources: list[str] = field(default_factory=lambda: list(HINTED))
    active: bool = True
    successful: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    last_delivered_at: str | None = None


class Webhooks:
    """The sandbox's one Dentally webhook: what to send, how badly, and what was sent.
    Writes are queued by the sandbox (no IO); a task in the sandbox's own event loop sends
    them."""

    def __init__(self, seed: int = 7) -> None:
        self.hook = Hook()
        self.faults = Faults()
        self.scheme = Scheme()
        self.rng = random.Random(seed)
        self.outbox: list[bytes] = []
        self.log: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._later: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def configure(self, data: dict[str, Any]) -> dict[str, Any]:
        if "url" in data:
            self.hook.url = data["url"] or None
            self.hook.active = True
            self.hook.consecutive_failures = 0
        if "secret" in data:
            self.hook.secret = str(data["secret"])
        if "resources" in data:
            self.hook.resources = [str(r) for r in data["resources"]]
        if "active" in data:
            self.hook.active = bool(data["active"])
        if "signature_header" in data:
            self.scheme = Scheme(str(data["signature_header"]), self.scheme.encoding)
        self.faults.update(data.get("faults") or {})
        return self.describe()

    def describe(self) -> dict[str, Any]:
        h = self.hook
        return {"url": h.url, "resources": h.resources, "active": h.active,
                "faults": {k: getattr(self.faults, k) for k in self.faults.__dataclass_fields__},
                "successful_deliveries": h.successful, "failed_deliveries": h.failed,
                "sent": len(self.log), "log": self.log[-200:]}

    def listing(self) -> dict[str, Any]:
        """``GET /v1/webhooks`` as observed: each webhook with its state and counts."""
        h = self.hook
        if h.url is None:
            return {"webhooks": []}
        return {"webhooks": [{
            "id": 1, "url": h.url, "active": h.active,
            "events": [f"{SINGULAR.get(r, r)}.{a}" for r in h.resources
                       for a in ("created", "updated", "deleted")],
            "failed_deliveries": h.failed, "successful_deliveries": h.successful,
            "last_delivered_at": h.last_delivered_at}]}

    # -- queueing (called by the sandbox on every write) ---------------------------------
    def wrote(self, resource: str, action: str, row: dict[str, Any]) -> None:
        h = self.hook
        if h.url is None or not h.active or resource not in h.resources:
            return
        singular = SINGULAR.get(resource, resource.rstrip("s"))
        data = row if action != "deleted" else {"id": row.get("id")}
        self.outbox.append(json.dumps({"event": f"{singular}.{action}", "object": singular,
                                       "data": data}, separators=(",", ":")).encode())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # no event loop (a unit test of the state): kept until one drains
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())

    # -- sending ------------------------------------------------------------------------
    async def _drain(self) -> None:
        while self.outbox:
            if self.faults.reorder:
                await asyncio.sleep(self.faults.reorder_window)
            batch, self.outbox = self.outbox, []
            if self.faults.reorder:
                batch.reverse()
            for body in batch:
                f = self.faults
                if f.drop_rate and self.rng.random() < f.drop_rate:
                    self._note(body, "dropped", None)
                    continue
                copies = 2 if f.duplicate_rate and self.rng.random() < f.duplicate_rate \
                    else 1
                bad = bool(f.bad_signature_rate) and self.rng.random() < f.bad_signature_rate
                for _ in range(copies):
                    if f.delay > 0:
                        task = asyncio.get_running_loop().create_task(
                            self._send(body, bad, f.delay))
                        self._later.add(task)
                        task.add_done_callback(self._later.discard)
                    else:
                        await self._send(body, bad, 0.0)

    async def _send(self, body: bytes, bad: bool, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        h = self.hook
        if h.url is None or not h.active:
            return
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10)
        signature = sign(h.secret + ("x" if bad else ""), body, self.scheme)
        fault = "bad_signature" if bad else None
        try:
            response = await self._http.post(h.url, content=body, headers={
                "content-type": "application/json", self.scheme.header: signature,
                "user-agent": "Dentally-Webhooks (sandbox)"})
            status: int | str = response.status_code
            ok = 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            status, ok = type(exc).__name__, False
        if ok:
            h.successful += 1
            h.consecutive_failures = 0
            h.last_delivered_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        else:
            h.failed += 1
            h.consecutive_failures += 1
            if h.consecutive_failures >= DISABLE_AFTER:
                h.active = False
        self._note(body, fault, status)

    def _note(self, body: bytes, fault: str | None, status: int | str | None) -> None:
        doc = json.loads(body)
        self.log.append({"n": len(self.log) + 1, "event": doc["event"],
                         "id": str((doc.get("data") or {}).get("id")), "fault": fault,
                         "status": status, "at": time.time()})
        if len(self.log) > 10_000:
            del self.log[:1000]
