"""Issue 10.9: Redis goes away during polling and delivery, and comes back; every loop
resumes within 5 s of Redis answering again, and the log says what happened."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until, write_config
from tests.proxy import RedisProxy
from tests.receiver import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RESUME_WITHIN = 5.0


async def _outage(tmp_path: Path, ns: Namespace, sandbox: SandboxThread,
                  control: SandboxControl, redis_proxy: RedisProxy, cut: float) -> None:
    await control.seed("patients", 5)
    with Receiver() as rx:
        cfg = write_config(tmp_path / "c.toml", redis_url=redis_proxy.url, prefix=ns.prefix,
                           stream=ns.stream, base_url=sandbox.url, key=sandbox.key or "",
                           resources=["patients"], initial_sync="emit",
                           subscribers=[{"name": "crm", "url": rx.url, "secret": SECRET,
                                         "allow_private": True, "start": "beginning"}])
        d = Daemon(cfg, tmp_path / "daemon.log")
        d.start()
        try:
            async def delivered(n: int) -> bool:
                return len(set(rx.ids())) >= n
            await wait_until(lambda: delivered(5), 30, "the first deliveries")
            await redis_proxy.cut()
            await control.create("patients", first_name="During", last_name="Outage")
            await anyio.sleep(cut)
            await redis_proxy.restore()
            back = time.monotonic()
            await control.create("patients", first_name="After", last_name="Outage")
            # Both new patients polled, committed and delivered: every loop is back.
            await wait_until(lambda: delivered(7), RESUME_WITHIN + 10, "delivery after")
            took = time.monotonic() - back
            assert d.alive()
        finally:
            d.stop()
    log = [json.loads(line) for line in d.log.read_text().splitlines() if line.startswith("{")]
    messages = [f"{e['level']} {e['msg']}" for e in log]
    assert took < RESUME_WITHIN + 0.5, f"{took:.1f}s after Redis answered again"
    assert not [m for m in messages if "another daemon" in m], messages[-30:]
    assert any("Redis answers again" in m for m in messages), messages[-30:]
    assert not [e for e in log if e["level"] == "error" and "Traceback" in e.get("exc", "")]


async def test_every_loop_resumes_soon_after_a_redis_outage(
        tmp_path: Path, ns: Namespace, sandbox: SandboxThread, control: SandboxControl,
        redis_proxy: RedisProxy) -> None:
    """A 20 s outage: longer than redis-py's own retries, and long enough for exponential
    backoffs (the poller's and the subscriber supervisor's, before) to reach 10 to 30 s."""
    await _outage(tmp_path, ns, sandbox, control, redis_proxy, cut=20.0)


@pytest.mark.slow
async def test_a_35_second_outage_past_the_practice_lock(
        tmp_path: Path, ns: Namespace, sandbox: SandboxThread, control: SandboxControl,
        redis_proxy: RedisProxy) -> None:
    await _outage(tmp_path, ns, sandbox, control, redis_proxy, cut=35.0)
