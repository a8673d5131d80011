"""SIGHUP with settings that only a restart can apply: said in the log, never silent."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from notifier import config
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until, write_config


def test_restart_needed_lists_each_changed_setting() -> None:
    base = {"practices": [], "subscribers": []}
    old = config.parse(base)
    same = config.parse({**base, "log": {"level": "debug"}})
    assert config.restart_needed(old, same) == []  # [log] applies on reload
    new = config.parse({**base, "metrics": {"listen": "127.0.0.1:9464"},
                        "redis": {"url": "redis://10.0.0.1:6379/0", "retention": 60}})
    assert config.restart_needed(old, new) == ["[redis] url", "[metrics] listen"]
    kept = config.keep_restart_only(old, new)  # retention applies at once; the rest waits
    assert kept.redis.url == old.redis.url and kept.metrics.listen is None
    assert kept.redis.retention == 60


def _log_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def test_sighup_adding_metrics_says_it_needs_a_restart(
        tmp_path: Path, ns: Namespace, redis_url: str, sandbox: SandboxThread,
        control: SandboxControl, daemon_factory: Callable[..., Daemon]) -> None:
    await control.seed("patients", 2)
    d = daemon_factory(resources=["patients"])
    d.start()

    async def started() -> bool:
        return any("started" in str(r.get("msg")) for r in _log_lines(d.log))
    await wait_until(started, 30, "the daemon to start")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_config(d.config, redis_url=redis_url, prefix=ns.prefix, stream=ns.stream,
                 base_url=sandbox.url, key=sandbox.key or "", resources=["patients"],
                 metrics_listen=f"127.0.0.1:{port}")
    d.signal(signal.SIGHUP)

    async def warned() -> bool:
        return any("[metrics] listen changed" in str(r.get("msg"))
                   and "restart" in str(r.get("msg")) for r in _log_lines(d.log))
    await wait_until(warned, 30, "the reload to say [metrics] needs a restart")
    assert d.alive()
    with socket.socket() as s:  # and it did not half-apply it
        assert s.connect_ex(("127.0.0.1", port)) != 0
