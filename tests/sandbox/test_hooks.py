"""The sandbox's Dentally-style webhooks and their faults, over real HTTP on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier.core import hints
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import AppThread, SandboxThread

SECRET = "hook-secret"


class Receiver:
    def __init__(self, status: int = 204) -> None:
        self.got: list[tuple[dict[str, Any], bool]] = []
        self.status = status

        async def hook(request: Request) -> Response:
            raw = await request.body()
            ok = hints.verify([SECRET], raw, request.headers.get("x-dentally-signature"))
            self.got.append((json.loads(raw), ok))
            return Response(status_code=self.status)
        self.thread = AppThread(Starlette(routes=[Route("/in", hook, methods=["POST"])]))
        self.url = self.thread.url + "/in"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with r.thread:
        yield r


async def until(check: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s")


async def test_writes_are_sent_signed(control: SandboxControl, receiver: Receiver) -> None:
    await control.dentally_webhooks(url=receiver.url, secret=SECRET)
    made = await control.create("patients", first_name="Ada")
    rid = str(made["id"])
    await control.update("patients", rid, first_name="Bea")
    await control.delete("patients", rid)
    await control.create("invoices")                   # Dentally sends none for invoices
    await until(lambda: len(receiver.got) == 3)
    docs = [d for d, ok in receiver.got if ok]
    assert [d["event"] for d in docs] == ["patient.created", "patient.updated",
                                          "patient.deleted"]
    assert all(d["object"] == "patient" and str(d["data"]["id"]) == rid for d in docs)
    assert docs[1]["data"]["first_name"] == "Bea"
    assert [hints.parse_hint(json.dumps(d).encode()) for d in docs][2] \
        == hints.Hint("patients", rid, "deleted")


async def test_faults(control: SandboxControl, receiver: Receiver) -> None:
    await control.dentally_webhooks(url=receiver.url, secret=SECRET,
                                    faults={"drop_rate": 1.0})
    ids = await control.seed("patients", 2)
    await anyio.sleep(0.3)
    assert receiver.got == []
    log = (await control.dentally_webhooks())["log"]
    assert [e["fault"] for e in log] == ["dropped", "dropped"]

    await control.dentally_webhooks(faults={"drop_rate": 0, "duplicate_rate": 1.0})
    await control.mutate("patients", ids=[ids[0]])
    await until(lambda: len(receiver.got) == 2)
    assert receiver.got[0] == receiver.got[1]

    receiver.got.clear()
    await control.dentally_webhooks(faults={"duplicate_rate": 0, "bad_signature_rate": 1.0})
    await control.mutate("patients", ids=[ids[0]])
    await until(lambda: len(receiver.got) == 1)
    assert receiver.got[0][1] is False

    receiver.got.clear()
    await control.dentally_webhooks(faults={"bad_signature_rate": 0, "reorder": True,
                                            "reorder_window": 0.2})
    await control.mutate("patients", ids=ids)          # two writes in one batch
    await until(lambda: len(receiver.got) == 2)
    assert [str(d["data"]["id"]) for d, _ in receiver.got] == ids[::-1]

    receiver.got.clear()
    await control.dentally_webhooks(faults={"reorder": False, "delay": 0.5})
    await control.mutate("patients", ids=[ids[0]])
    await anyio.sleep(0.25)
    assert receiver.got == []
    await until(lambda: len(receiver.got) == 1)


async def test_switched_off_after_50_failures_and_listed(
        sandbox: SandboxThread, control: SandboxControl) -> None:
    failing = Receiver(status=500)
    with failing.thread:
        await control.dentally_webhooks(url=failing.url, secret=SECRET)
        ids = await control.seed("patients", 3)
        for _ in range(20):
            await control.mutate("patients", ids=ids)
        await until(lambda: len(failing.got) >= 50)
        await anyio.sleep(0.2)
        assert len(failing.got) == 50
    async with httpx.AsyncClient(base_url=sandbox.url + "/v1", headers={
            "User-Agent": "tests", "Authorization": f"Bearer {sandbox.key}"}) as api:
        hooks = (await api.get("/webhooks")).json()["webhooks"]
        assert hooks[0]["active"] is False and hooks[0]["failed_deliveries"] == 50
        assert hooks[0]["successful_deliveries"] == 0
        await control.add_key("readonly", scopes=["patients:read"])
        r = await api.get("/webhooks", headers={"Authorization": "Bearer readonly"})
        assert r.status_code == 403
