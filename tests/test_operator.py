"""Operator input, as a user types it: config errors (exit 2 naming the key, at start, in
``check`` and on SIGHUP), credentials in Redis URLs, ``tail`` and ``redeliver`` on real
data, and secret files that others may read (issue 10 items 10-14, issue 12 items 1, 10)."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from notifier import config
from notifier.events import notifier_event, record_event
from notifier.sandbox.server import SandboxThread
from notifier.store.redis import Store
from tests.conftest import Namespace
from tests.integration.daemon import Daemon, wait_until, write_config
from tests.receiver import Receiver
from tests.test_cli import run_cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def cfg_with(tmp_path: Path, redis_url: str, ns: Namespace, **kw: Any) -> Path:
    return write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                        stream=ns.stream, base_url="http://127.0.0.1:9", key="k", **kw)


# -- 10: config errors are exit 2 naming the key, and a reload never exits the daemon ----
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_port_out_of_range_is_exit_2_naming_the_key(
        tmp_path: Path, redis_url: str, ns: Namespace, command: str) -> None:
    cfg = cfg_with(tmp_path, redis_url, ns, subscribers=[
        {"name": "crm", "url": "http://hooks.example.com:99999/x", "secret": SECRET}])
    done = run_cli(command, "--config", str(cfg), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "subscribers[0] (crm).url" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("key", ["_env_prefix", "_cli_parse_args", "_secrets_dir"])
@pytest.mark.parametrize("command", ["run", "check"])
def test_toml_keys_that_are_pydantic_settings_options_are_refused(
        tmp_path: Path, redis_url: str, ns: Namespace, key: str, command: str) -> None:
    cfg = cfg_with(tmp_path, redis_url, ns)
    cfg.write_text(f"{key} = {json.dumps('X_' if key != '_cli_parse_args' else True)}\n"
                   .replace('"true"', "true") + cfg.read_text())
    done = run_cli(command, "--config", str(cfg), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert key in done.stderr and "unknown key" in done.stderr


def test_underscore_keys_cannot_switch_off_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(config.ConfigError, match="_env_prefix: unknown key"):
        config.parse({"_env_prefix": "NOPE_"})


@pytest.mark.parametrize("breakage", [
    ("\nurl = \"http://127.0.0.1:", "\nurl = \"http://127.0.0.1:99999/x#"),
    ("[redis]", "_cli_parse_args = true\n[redis]"),
])
async def test_a_bad_reload_never_exits_the_daemon(
        redis: Redis, ns: Namespace, sandbox: SandboxThread,
        daemon_factory: Callable[..., Daemon], breakage: tuple[str, str]) -> None:
    with Receiver() as rx:
        d = daemon_factory(resources=["patients"], subscribers=[
            {"name": "crm", "url": rx.url, "secret": SECRET, "allow_private": True}])
        d.start()
        await wait_until(lambda: _logged(d, "consumer group created"), 20, "the daemon")
        old, new = breakage
        text = d.config.read_text()
        assert old in text
        d.config.write_text(text.replace(old, new, 1) + "\n")
        d.signal(signal.SIGHUP)
        await wait_until(lambda: _logged(d, "refused"), 10, "the reload to be refused")
        await anyio.sleep(0.5)
        assert d.alive(), d.log.read_text()[-2000:]
        assert "Traceback" not in d.log.read_text()


async def _logged(d: Daemon, text: str) -> bool:
    return d.log.exists() and text in d.log.read_text()


# -- 11: no credential of a Redis URL in any message -----------------------------------
@pytest.mark.parametrize("url", [
    "redis://:hunter2pw@127.0.0.1:1/0",
    "redis://admin:hunter2pw@127.0.0.1:1/0",
    "redis://127.0.0.1:1/0?password=hunter2pw",
    "redis://127.0.0.1:1/0?username=u&password=hunter2pw&socket_timeout=1",
])
@pytest.mark.parametrize("command", ["run", "check", "status"])
def test_redis_credentials_are_never_printed(
        tmp_path: Path, ns: Namespace, url: str, command: str) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=url, prefix=ns.prefix,
                       stream=ns.stream, base_url="http://127.0.0.1:9", key="k")
    done = run_cli(command, "--config", str(cfg), timeout=60)
    assert done.returncode in (3, 4), done.stdout + done.stderr
    assert "cannot reach Redis" in done.stdout + done.stderr
    assert "hunter2pw" not in done.stdout + done.stderr


def test_redact_every_credential_form() -> None:
    from notifier.store.connection import redact

    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact("rediss://h:1/0?password=pw&db=2") == "rediss://h:1/0?password=***&db=2"
    assert redact("redis://h/0?Password=pw&auth_token=t") == \
        "redis://h/0?Password=***&auth_token=***"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


# -- 12 / issue 12.10: tail ---------------------------------------------------------------
async def _add(store: Store, event: Any) -> None:
    await store.redis.xadd(store.stream, dict(event.stream_fields()))


async def test_tail_shows_notifier_events_and_escapes_control_characters(
        tmp_path: Path, redis_url: str, ns: Namespace, store: Store) -> None:
    now = datetime.now(UTC)
    await _add(store, record_event("main", "patients", "created",
                                   {"id": 1, "first_name": "Eve\x1b[2J\x1b]0;pwned\x07",
                                    "last_name": "X\u202e"}, now))
    await _add(store, notifier_event("notifier.subscriber.disabled", "",
                                     {"subscriber": "crm", "reason": "HTTP 410 Gone",
                                      "action": "fix it, then enable"}, now, "crm"))
    await _add(store, notifier_event("notifier.key.revoked", "main",
                                     {"key": "ab12", "reason": "401", "action": "new key"},
                                     now, "ab12"))
    done = run_cli("tail", "--config", str(cfg_with(tmp_path, redis_url, ns)), "--no-follow")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "\u202e" not in done.stdout
    assert "\\x1b[2J" in lines[0] and "\\x07" in lines[0]
    assert "notifier.subscriber.disabled" in lines[1] and "crm" in lines[1]
    assert "reason: HTTP 410 Gone" in lines[1] and "action: fix it, then enable" in lines[1]
    assert "reason: 401" in lines[2] and "action: new key" in lines[2]


async def test_tail_counts_n_after_the_filters_and_filters_by_practice(
        tmp_path: Path, redis_url: str, ns: Namespace, store: Store) -> None:
    now = datetime.now(UTC)
    for i in range(30):
        practice = "north" if i % 3 else "south"
        resource = "invoices" if i % 2 else "patients"
        await _add(store, record_event(practice, resource, "created",
                                       {"id": i, "amount": i, "first_name": f"P{i}"}, now))
    cfg = str(cfg_with(tmp_path, redis_url, ns))
    done = run_cli("tail", "--config", cfg, "--no-follow", "-n", "4", "--type", "invoice.*")
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and all("invoice.created" in ln for ln in lines), done.stdout
    assert "invoices/29" in lines[-1] and "invoices/23" in lines[0]
    done = run_cli("tail", "--config", cfg, "--no-follow", "-n", "100", "--practice", "south")
    lines = done.stdout.splitlines()
    assert len(lines) == 10 and all(" south " in ln for ln in lines), done.stdout


async def test_tail_follows_a_stream_quiet_for_longer_than_the_socket_timeout(
        redis_url: str, ns: Namespace, store: Store) -> None:
    """Issue 12.1: ``tail`` blocked 5 s on a client that gives up after 5 s."""
    from notifier.service import tail

    settings = config.parse({"redis": {"url": redis_url, "prefix": ns.prefix,
                                       "stream": ns.stream}})
    out = io.StringIO()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tail.run(settings, out, [], 10))
        await anyio.sleep(6.5)  # quiet for longer than redis-py's 5 s socket timeout
        await _add(store, record_event("main", "patients", "created",
                                       {"id": 7, "first_name": "Late"}, datetime.now(UTC)))
        await wait_until(lambda: _has(out, "patients/7"), 5, "the event after the quiet")
        tg.cancel_scope.cancel()


async def _has(out: io.StringIO, text: str) -> bool:
    return text in out.getvalue()


# -- 13: redeliver --since before the stream ---------------------------------------------
async def test_redeliver_since_before_the_stream_means_from_the_beginning(
        tmp_path: Path, redis_url: str, ns: Namespace, store: Store) -> None:
    now = datetime.now(UTC)
    for i in range(3):
        await _add(store, record_event("main", "patients", "created", {"id": i}, now))
    with Receiver() as rx:
        cfg = cfg_with(tmp_path, redis_url, ns, subscribers=[
            {"name": "crm", "url": rx.url, "secret": SECRET, "allow_private": True}])
        for since in ("1960-01-01", "1970-01-01T00:00:00Z"):
            done = run_cli("redeliver", "crm", "--config", str(cfg), "--since", since)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "redelivered 3 of 3" in done.stdout
    assert len(rx.received) == 6


# -- 14: secret files others may read -----------------------------------------------------
async def test_secret_files_readable_by_others_are_warned_about(
        tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread,
        daemon_factory: Callable[..., Daemon]) -> None:
    key = tmp_path / "api-key"
    key.write_text((sandbox.key or "") + "\n")
    key.chmod(0o644)
    secret = tmp_path / "hook-secret"
    secret.write_text(SECRET)
    secret.chmod(0o640)
    with Receiver() as rx:
        d = daemon_factory(resources=["patients"], api_key_file=str(key), subscribers=[
            {"name": "crm", "url": rx.url, "secret_file": str(secret),
             "allow_private": True}])
        done = run_cli("check", "--config", str(d.config))
        assert done.returncode == 0, done.stdout + done.stderr
        rows = [ln for ln in done.stdout.splitlines() if ln.startswith("secret file")]
        assert len(rows) == 2 and all("warn" in r for r in rows)
        assert "practices[0] (main).api_key_file" in rows[0] and "0644" in rows[0]
        assert "subscribers[0] (crm).secret_file" in rows[1] and "0640" in rows[1]
        d.start()
        await wait_until(lambda: _logged(d, "chmod 600"), 20, "the warning at start")
        key.chmod(0o600)
        secret.chmod(0o600)
        done = run_cli("check", "--config", str(d.config))
        assert "secret file" not in done.stdout
    assert sandbox.key not in d.log.read_text() and SECRET not in d.log.read_text()


@pytest.mark.parametrize(("argv", "said"), [
    (["redeliver", "nosuch"], "no subscriber named 'nosuch' in the config (configured: crm)"),
    (["reconcile", "nosuch", "patients"],
     "no practice named 'nosuch' in the config (configured: main)"),
])
def test_an_unknown_name_is_exit_2_listing_the_configured_ones(
        tmp_path: Path, redis_url: str, ns: Namespace, argv: list[str], said: str) -> None:
    cfg = cfg_with(tmp_path, redis_url, ns, subscribers=[
        {"name": "crm", "url": "http://hooks.example.com/x", "secret": SECRET}])
    done = run_cli(*argv, "--config", str(cfg), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
