"""The health model: beating, stalled and paused loops; /healthz (issue 10.3)."""

from __future__ import annotations

import httpx

from notifier.core.health import Health
from notifier.ops.metrics import Metrics, app


def test_a_paused_loop_is_not_stalled_until_it_beats_again() -> None:
    h = Health()
    h.beat("subscriber/crm", 0.0, 90.0)
    h.beat("practice/main/patients", 0.0, 90.0)
    assert h.stalled(91.0) == ["practice/main/patients", "subscriber/crm"]
    h.pause("subscriber/crm", "disabled")
    assert h.stalled(10_000.0) == ["practice/main/patients"]
    assert h.paused() == ["subscriber/crm"] and h.paused("disabled") == ["subscriber/crm"]
    h.beat("subscriber/crm", 10_000.0, 90.0)  # enabled again: promises again
    assert h.paused() == [] and h.stalled(10_091.0) == ["practice/main/patients",
                                                         "subscriber/crm"]
    h.forget("subscriber/crm")
    assert h.stalled(10_091.0) == ["practice/main/patients"]


async def test_healthz_says_disabled_not_stalled() -> None:
    h = Health()
    h.beat("practice/main/patients", 0.0, 60.0)
    h.pause("subscriber/crm", "disabled")
    now = [30.0]
    transport = httpx.ASGITransport(app=app(Metrics(), h, wall=lambda: now[0]))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"ok": True, "disabled": ["subscriber/crm"]}
        now[0] = 61.0
        r = await c.get("/healthz")
        assert r.status_code == 503
        assert r.json() == {"ok": False, "stalled": ["practice/main/patients"],
                            "disabled": ["subscriber/crm"]}
