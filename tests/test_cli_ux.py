"""The command line's rough edges, as a new integrator meets them: closed pipes, busy
ports, commands that read Redis alone, plurals."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until, write_config
from tests.test_cli import run_cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def keyless_config(tmp_path: Path, redis_url: str, ns: Namespace) -> Path:
    """A config whose API key and webhook secret come from variables that are not set."""
    return write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                        stream=ns.stream, base_url="http://127.0.0.1:9",
                        key="", api_key_env="UNSET_DENTALLY_KEY_FOR_TEST",
                        subscribers=[{"name": "crm", "url": "https://crm.example.com/h",
                                      "secret_env": "UNSET_WEBHOOK_SECRET_FOR_TEST"}])


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path, redis_url: str,
                                                ns: Namespace) -> None:
    """`status | head`: the reader left; no BrokenPipeError traceback."""
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url="http://127.0.0.1:9", key="k")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write a byte
    try:
        done = subprocess.run([sys.executable, "-m", "notifier", "status", "--config",
                               str(cfg)], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stderr == "" and done.returncode == 0


def test_sandbox_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("sandbox", "--port", str(port))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0] and "in use" in lines[0]


async def test_commands_that_read_redis_alone_need_no_keys(
        tmp_path: Path, redis_url: str, ns: Namespace, redis: Redis) -> None:
    cfg = str(keyless_config(tmp_path, redis_url, ns))
    for args in (("status",), ("status", "--json"), ("tail", "--no-follow"),
                 ("subscriber", "enable", "crm")):
        done = run_cli(*args, "--config", cfg)
        assert done.returncode == 0, (args, done.stderr)
        assert "UNSET_DENTALLY_KEY_FOR_TEST" not in done.stderr
    # redeliver signs, so it asks for its own subscriber's secret, and for nothing else
    done = run_cli("redeliver", "crm", "--config", cfg)
    assert done.returncode == 2
    assert "UNSET_WEBHOOK_SECRET_FOR_TEST" in done.stderr
    assert "UNSET_DENTALLY_KEY_FOR_TEST" not in done.stderr
    # the commands that talk to Dentally still refuse, naming the variable
    for command in ("run", "check"):
        done = run_cli(command, "--config", cfg)
        assert done.returncode == 2, (command, done.stderr)
        assert "UNSET_DENTALLY_KEY_FOR_TEST" in done.stderr


async def test_status_shows_why_a_subscriber_fails_and_when_it_retries(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    from tests.receiver import Receiver, Reply

    await control.seed("patients", 1, spread_days=1)
    with Receiver(lambda r, n: Reply(503)) as rx:
        daemon = daemon_factory(resources=["patients"], initial_sync="emit", subscribers=[
            {"name": "crm", "url": rx.url, "secret": SECRET, "allow_private": True,
             "start": "beginning", "retry_schedule": [600, 600]}])
        daemon.start()

        async def retrying() -> bool:
            return await redis.zcard(f"{ns.prefix}:sub:crm:retry") == 1
        await wait_until(retrying, 30, "the failed attempt to be scheduled for a retry")
        done = run_cli("status", "--config", str(daemon.config))
    assert done.returncode == 0, done.stderr
    block = done.stdout.split("subscriber crm:")[1]
    assert "failing since" in block and "last error" in block and "HTTP 503" in block
    found = re.search(r"next retry in (\d+)m \(20\d\d-", block)
    assert found and 8 <= int(found.group(1)) <= 12, block  # 600 s, jittered by 20%


def test_sandbox_edits_look_like_real_edits_and_payments_are_positive() -> None:
    from notifier.sandbox.state import Sandbox

    sb = Sandbox()
    for resource in ("patients", "appointments", "invoices", "payments"):
        [rid] = sb.seed(resource, 1)
        for _ in range(12):  # an invoice paid off and edited again, and again
            before = dict(sb.tables[resource].rows[rid])
            after = sb.update(resource, rid)
            assert after is not None
            changed = {k for k in after if after[k] != before.get(k)} - {"updated_at"}
            assert changed and "metadata" not in changed, (resource, changed)
    for _ in range(50):
        assert float(sb.create("payments")["amount"]) > 0


async def test_status_escapes_control_characters_from_outside(
        redis: Redis, ns: Namespace, daemon_factory: Callable[..., Daemon]) -> None:
    """A last error carries text from Dentally or a subscriber: an escape sequence in it
    must reach the operator's terminal as text, not as a command to the terminal."""
    daemon = daemon_factory(resources=["patients"])
    await redis.hset(f"{ns.prefix}:{{main}}:cursor:patients",
                     mapping={"last_error": "bad name \x1b]0;pwned\x07\x1b[2J"})
    done = run_cli("status", "--config", str(daemon.config))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "bad name \\x1b]0;pwned\\x07\\x1b[2J" in done.stdout
