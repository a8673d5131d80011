"""The sandbox's ledger: every write and every API request, read through the control API."""

from __future__ import annotations

import httpx

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.ledger import content_hash
from notifier.sandbox.server import SandboxThread


async def test_ledger_records_writes_with_hashes_and_requests(
        sandbox: SandboxThread, control: SandboxControl) -> None:
    made = await control.create("patients", first_name="Ada")
    rid = str(made["id"])
    changed = await control.update("patients", rid, first_name="Grace")
    await control.delete("patients", rid)
    seeded = await control.seed("invoices", 2, at_ms=1_700_000_000_000)
    async with httpx.AsyncClient() as http:
        ok = await http.get(f"{sandbox.url}/v1/patients",
                            headers={"authorization": f"Bearer {sandbox.key}",
                                     "user-agent": "t"})
        bad = await http.get(f"{sandbox.url}/v1/patients",
                             headers={"authorization": "Bearer nope", "user-agent": "t"})
    assert (ok.status_code, bad.status_code) == (200, 401)

    book = await control.ledger()
    mine = [w for w in book["writes"]
            if (w["resource"], w["record_id"]) == ("patients", rid)]
    assert [(w["hash"], w["deleted"]) for w in mine] == [
        (content_hash(made), False), (content_hash(changed), False), (None, True)]
    assert [w["seq"] for w in book["writes"]] == sorted(w["seq"] for w in book["writes"])
    # A seed at a fixed instant: the last write of each row carries that updated_at.
    last = {w["record_id"]: w for w in book["writes"] if w["resource"] == "invoices"}
    assert set(last) == set(seeded)
    assert {w["updated_ms"] for w in last.values()} == {1_700_000_000_000}
    assert [(r["token"], r["path"], r["status"]) for r in book["requests"]] == [
        (sandbox.key, "/v1/patients", 200), ("nope", "/v1/patients", 401)]

    later = await control.ledger(since=book["seq"], requests_since=book["requests_seq"])
    assert later["writes"] == [] and later["requests"] == []
