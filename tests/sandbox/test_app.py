"""The sandbox behaves like the real API (dentally-api.md), over real HTTP on loopback."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime

import httpx
import pytest

from notifier.core.timefmt import format_ms, parse_ms
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread

DAY = 86_400_000


@pytest.fixture
async def api(sandbox: SandboxThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.url + "/v1", headers={
            "User-Agent": "tests", "Authorization": f"Bearer {sandbox.key}"}) as c:
        yield c


async def test_user_agent_and_keys(api: httpx.AsyncClient, control: SandboxControl) -> None:
    assert (await api.get("/user")).json()["user"]["id"] == 1
    assert (await api.get("/user", headers={"User-Agent": ""})).status_code == 403
    assert (await api.get("/user", headers={"Authorization": "Bearer nope"})).status_code == 401
    await control.add_key("limited", scopes=["patients:read"])
    limited = {"Authorization": "Bearer limited"}
    assert (await api.get("/patients", headers=limited)).status_code == 200
    r = await api.get("/appointments", headers=limited)
    assert r.status_code == 403 and "scope" in r.json()["error"]["message"]
    await control.key("limited", "revoke")
    assert (await api.get("/patients", headers=limited)).status_code == 401


async def test_idle_key_expires_after_two_weeks(api: httpx.AsyncClient,
                                                control: SandboxControl) -> None:
    await control.add_key("idle")
    await control.clock(advance_ms=13 * DAY)
    assert (await api.get("/user", headers={"Authorization": "Bearer idle"})).status_code == 200
    await control.clock(advance_ms=15 * DAY)
    r = await api.get("/user", headers={"Authorization": "Bearer idle"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


async def test_pages_and_per_page_rules(api: httpx.AsyncClient, control: SandboxControl) -> None:
    await control.seed("patients", 130, spread_days=10)
    r = (await api.get("/patients")).json()
    assert len(r["patients"]) == 25 and r["meta"]["total_count"] == 130
    assert len((await api.get("/patients", params={"per_page": 500})).json()["patients"]) == 25
    p1 = (await api.get("/patients", params={"per_page": 100})).json()["patients"]
    p2 = (await api.get("/patients", params={"per_page": 100, "page": 2})).json()["patients"]
    assert len(p1) == 100 and len(p2) == 30
    assert len({r["id"] for r in p1 + p2}) == 130
    assert (await api.get("/patients", params={"per_page": 100, "page": 3})).json()[
        "patients"] == []
    assert (await api.get("/patients", params={"page": "x"})).status_code == 400


async def test_record_shapes(api: httpx.AsyncClient, control: SandboxControl) -> None:
    await control.seed("patients", 1)
    await control.seed("invoices", 1)
    await control.seed("sites", 1)
    patient = (await api.get("/patients")).json()["patients"][0]
    assert isinstance(patient["id"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d",
                        patient["updated_at"])
    assert isinstance((await api.get("/invoices")).json()["invoices"][0]["amount"], str)
    site = (await api.get("/sites")).json()["sites"][0]
    assert isinstance(site["id"], str) and len(site["id"]) == 36
    single = (await api.get(f"/patients/{patient['id']}")).json()
    assert single == {"patient": patient}


async def test_updated_filters(api: httpx.AsyncClient, control: SandboxControl) -> None:
    now = (await control.clock())["now_ms"]
    await control.seed("patients", 5, at_ms=now - 10 * DAY)
    await control.seed("patients", 3, at_ms=now - 5 * DAY)
    await control.seed("patients", 2, at_ms=now - 1 * DAY)
    after = format_ms(now - 6 * DAY)
    assert (await api.get("/patients", params={"updated_after": after})).json()[
        "meta"]["total_count"] == 5
    window = {"updated_after": after, "updated_before": format_ms(now - 2 * DAY)}
    rows = (await api.get("/patients", params=window)).json()["patients"]
    assert len(rows) == 3
    assert all(parse_ms(r["updated_at"]) == now - 5 * DAY for r in rows)
    assert (await api.get("/patients", params={"updated_after": "soon"})).status_code == 400


async def test_appointments_ignore_updated_before_and_hide_cancelled(
        api: httpx.AsyncClient, control: SandboxControl) -> None:
    ids = await control.seed("appointments", 4)
    await control.update("appointments", ids[0], state="Cancelled")
    await control.update("appointments", ids[1], state="Did not attend")
    assert (await api.get("/appointments")).json()["meta"]["total_count"] == 2
    both = (await api.get("/appointments", params={"cancelled": "true"})).json()
    assert both["meta"]["total_count"] == 4
    past = {"cancelled": "true", "updated_before": "2000-01-01T00:00:00Z"}
    assert (await api.get("/appointments", params=past)).json()["meta"]["total_count"] == 4


async def test_deleted_records_vanish(api: httpx.AsyncClient, control: SandboxControl) -> None:
    ids = await control.seed("patients", 3)
    await control.delete("patients", ids[1])
    listed = {str(r["id"]) for r in (await api.get("/patients")).json()["patients"]}
    assert listed == {ids[0], ids[2]}
    assert (await api.get(f"/patients/{ids[1]}")).status_code == 404


async def test_fixed_rate_window(api: httpx.AsyncClient, control: SandboxControl) -> None:
    await control.quirks(rate_limit=3, rate_window=60)
    start = (await control.clock(freeze_ms=1_795_791_601_000))["now_ms"]
    seen = [await api.get("/user") for _ in range(4)]
    assert [r.status_code for r in seen] == [200, 200, 200, 403]
    assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0", "0"]
    assert seen[0].headers["x-ratelimit-reset"] == str(start // 60_000 * 60 + 60)
    await control.quirks(rate_limit_status=429)
    r = await api.get("/user")
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 59
    await control.clock(advance_ms=60_000)  # the next clock window: the budget is back
    assert (await api.get("/user")).status_code == 200


async def test_hourly_cap_answers_the_reported_403_body(api: httpx.AsyncClient,
                                                       control: SandboxControl) -> None:
    await control.quirks(rate_limit=1, rate_window=60)
    assert (await api.get("/user")).status_code == 200
    r = await api.get("/user")
    assert r.status_code == 403 and "retry-after" not in r.headers
    assert r.json() == {"error": {"type": "invalid_access_error",
                                  "message": "Rate limit exceeded"}}


async def test_window_starting_at_the_first_request(api: httpx.AsyncClient,
                                                    control: SandboxControl) -> None:
    await control.quirks(rate_limit=2, rate_window=60, rate_window_start="first_request")
    first = (await control.clock(freeze_ms=1_795_791_601_500))["now_ms"]
    assert (await api.get("/user")).headers["x-ratelimit-reset"] == str(
        -(-(first + 60_000) // 1000))   # not the clock minute: 60 s after the first request
    await control.clock(advance_ms=59_000)
    assert (await api.get("/user")).status_code == 200
    assert (await api.get("/user")).status_code == 403
    await control.clock(advance_ms=1_000)   # 60 s after the first request: a new window
    r = await api.get("/user")
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "1"
    assert r.headers["x-ratelimit-reset"] == str((first + 120_000) // 1000 + 1)


async def test_burst_limit_per_key(api: httpx.AsyncClient, control: SandboxControl) -> None:
    await control.quirks(burst_limit=3)
    await control.clock(freeze_ms=1_795_791_601_000)
    seen = [await api.get("/user") for _ in range(4)]
    assert [r.status_code for r in seen] == [200, 200, 200, 429]
    assert seen[3].headers["retry-after"] == "1"
    await control.add_key("other-key")   # another key of the same user has its own burst
    other = {"Authorization": "Bearer other-key"}
    assert (await api.get("/user", headers=other)).status_code == 200
    await control.clock(advance_ms=1_000)
    assert (await api.get("/user")).status_code == 200
    statuses = [s for _, _, s in (await control.stats())["log"]]
    assert statuses.count(429) == 1 and statuses.count(200) == 5


async def test_date_header_follows_the_sandbox_clock(api: httpx.AsyncClient,
                                                     control: SandboxControl) -> None:
    await control.clock(freeze_ms=1_700_000_000_000)
    r = await api.get("/user")
    assert parsedate_to_datetime(r.headers["date"]).timestamp() == 1_700_000_000


async def test_injected_failures_and_deep_pages(api: httpx.AsyncClient,
                                                control: SandboxControl) -> None:
    await control.seed("patients", 30)
    await control.quirks(fail_next=[503, 500], deep_page_limit=20)
    assert (await api.get("/patients")).status_code == 503
    assert (await api.get("/patients")).status_code == 500
    assert (await api.get("/patients", params={"per_page": 10, "page": 2})).status_code == 200
    assert (await api.get("/patients", params={"per_page": 10, "page": 3})).status_code == 413


async def test_unstable_pages_repeat_and_skip(api: httpx.AsyncClient,
                                              control: SandboxControl) -> None:
    await control.seed("patients", 1000)
    await control.quirks(unstable_rate=0.05)
    ids: list[int] = []
    for page in range(1, 11):
        r = await api.get("/patients", params={"per_page": 100, "page": page})
        ids += [row["id"] for row in r.json()["patients"]]
    assert len(ids) == 1000
    assert 0 < 1000 - len(set(ids)) < 100  # some served twice, as many never


async def test_each_endpoint_honours_only_its_own_filters(
        api: httpx.AsyncClient, control: SandboxControl) -> None:
    """From dentally-api.md, not from the product's table: payments have no updated_after,
    treatment plan items no updated_before, reference data no update filter at all."""
    now = (await control.clock())["now_ms"]
    for resource in ("payments", "treatment_plan_items", "rooms", "patients"):
        await control.seed(resource, 2, at_ms=now - 10 * DAY)
        await control.seed(resource, 1, at_ms=now - DAY)
    recent = {"updated_after": format_ms(now - 2 * DAY)}
    old = {"updated_before": format_ms(now - 2 * DAY)}

    async def count(resource: str, params: dict[str, str]) -> int:
        return int((await api.get(f"/{resource}", params=params)).json()["meta"]["total_count"])

    assert await count("patients", recent) == 1 and await count("patients", old) == 2
    assert await count("payments", recent) == 3
    assert await count("treatment_plan_items", recent) == 1
    assert await count("treatment_plan_items", old) == 3
    assert await count("rooms", recent) == 3
    # An ignored filter is not even parsed.
    assert (await api.get("/payments", params={"updated_after": "soon"})).status_code == 200


async def test_one_shot_date_offsets_and_a_skewed_date(api: httpx.AsyncClient,
                                                       control: SandboxControl) -> None:
    await control.clock(freeze_ms=1_700_000_000_000)
    await control.quirks(date_offsets=[600_000, 600_000])

    async def date() -> float:
        return parsedate_to_datetime((await api.get("/user")).headers["date"]).timestamp()

    assert [await date() for _ in range(3)] == [1_700_000_600, 1_700_000_600, 1_700_000_000]
    await control.quirks(date_skew_ms=-5000)
    assert await date() == 1_699_999_995


async def test_writes_between_two_page_reads(api: httpx.AsyncClient,
                                            control: SandboxControl) -> None:
    ids = await control.seed("appointments", 6)
    await control.quirks(between_pages=[{"resource": "appointments", "after_page": 1,
                                         "delete": 1, "create": 1}])
    params = {"cancelled": "true", "per_page": 3}
    p1 = (await api.get("/appointments", params=params)).json()
    p2 = (await api.get("/appointments", params={**params, "page": 2})).json()
    assert p1["meta"]["total_count"] == p2["meta"]["total_count"] == 6
    seen = [str(r["id"]) for r in p1["appointments"] + p2["appointments"]]
    assert len(set(seen)) == 6 and ids[0] in seen
    assert ids[3] not in seen       # slid onto page 1 after it was read: never served
    assert (await control.quirks())["between_pages"] == []   # fired once


async def test_records_stamped_in_the_future(api: httpx.AsyncClient,
                                             control: SandboxControl) -> None:
    now = (await control.clock(freeze_ms=1_700_000_000_000))["now_ms"]
    await control.quirks(write_skew_ms=3_600_000)
    made = await control.create("patients")
    assert parse_ms(made["updated_at"]) == now + 3_600_000


def test_the_sandbox_does_not_read_the_product_resource_table() -> None:
    """The sandbox describes Dentally on its own (notifier/sandbox/api.py): built from the
    table under test, a wrong assumption there could never fail a test."""
    from pathlib import Path

    import notifier.sandbox as pkg
    for source in Path(pkg.__file__).parent.glob("*.py"):
        assert "import" not in "".join(
            line for line in source.read_text().splitlines() if "core.resources" in line
        ), source.name
