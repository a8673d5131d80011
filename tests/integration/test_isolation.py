"""One bug in one resource stops that resource only, and says why.

The fault is real, not a mock: the sandbox serves a patient whose name holds half of a
UTF-16 surrogate pair (``"\\ud83d"``, an emoji cut in two by some system upstream). JSON
allows the escape, Python decodes it to a string that cannot be encoded as UTF-8, and
the poller fails on it with an error nobody planned for.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until

BROKEN = b'{"record": {"first_name": "Ana\\ud83d", "last_name": "Broken"}}'


async def test_an_unexpected_error_stops_only_its_resource_and_says_why(
        redis: Redis, ns: Namespace, control: SandboxControl, sandbox: SandboxThread,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 3)
    await control.seed("invoices", 3)
    d = daemon_factory(resources=["patients", "invoices"], initial_sync="emit",
                       keepalive_interval=1.0)
    d.start()

    async def count(type_: str, n: int) -> bool:
        evs: list[dict[str, Any]] = await stream_events(redis, ns.stream)
        return sum(e["type"] == type_ for e in evs) >= n
    await wait_until(lambda: count("patient.created", 3), 20, "the first patients")
    await wait_until(lambda: count("invoice.created", 3), 20, "the first invoices")

    async with httpx.AsyncClient() as http:
        r = await http.post(f"{sandbox.url}/_sandbox/records/patients", content=BROKEN,
                            headers={"content-type": "application/json"})
        r.raise_for_status()
        broken_id = r.json()["ids"][0]
    started = (await control.stats())["requests"][sandbox.key]
    for _ in range(3):   # invoices go on while patients fail
        await control.mutate("invoices", count=1)
        await anyio.sleep(0.7)
    await wait_until(lambda: count("invoice.updated", 3), 20, "invoices during the fault")

    cursor = f"{ns.prefix}:{{main}}:cursor:patients"

    async def noted() -> bool:
        err = await redis.hget(cursor, "last_error")
        return bool(err) and b"UnicodeEncodeError" in err
    await wait_until(noted, 20, "last_error of the failing resource")
    status = json.loads((await anyio.run_process(
        [sys.executable, "-m", "notifier", "status", "--json", "--config",
         str(d.config)])).stdout)
    (practice,) = status["practices"]
    errors = {r["resource"]: r["last_error"] for r in practice["resources"]}
    assert "UnicodeEncodeError" in errors["patients"]
    assert errors["invoices"] is None
    assert d.alive()
    log = d.log.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    tracebacks = [x for x in records if "Traceback" in json.dumps(x)]
    assert len(tracebacks) == 1, "logged once, with its traceback"
    assert "UnicodeEncodeError" in json.dumps(tracebacks[0])
    assert tracebacks[0].get("resource") == "patients"
    assert "practice stopped" not in log and "ExceptionGroup" not in log
    # The key keep-alive (every second here) carried on through the fault.
    assert (await control.stats())["requests"][sandbox.key] - started >= 3

    # Fixed upstream: the resource resumes by itself (backoff: 5 s, then 10 s).
    await control.update("patients", broken_id, first_name="Ana")
    await wait_until(lambda: count("patient.created", 4), 30, "the resource's recovery")
    assert await redis.hget(cursor, "last_error") == b""
