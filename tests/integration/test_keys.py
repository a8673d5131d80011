"""The key's life through the daemon as a process: revocation, restoration, scopes."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from notifier.sandbox.control import SandboxControl
from tests.conftest import Namespace
from tests.helpers import stream_events
from tests.integration.daemon import Daemon, wait_until


async def events(redis: Redis, ns: Namespace) -> list[dict[str, Any]]:
    return await stream_events(redis, ns.stream)


def of(evs: list[dict[str, Any]], type_: str, practice: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == type_ and e["data"]["practice"] == practice]


async def test_revoked_key_stops_loudly_and_a_new_key_resumes_losing_nothing(
        tmp_path: Path, redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.add_key("main-1")
    await control.add_key("other-key")
    keyfile = tmp_path / "main.key"
    keyfile.write_text("main-1\n")
    ids = await control.seed("patients", 20, spread_days=3)
    daemon = daemon_factory(resources=["patients"], api_key_file=str(keyfile),
                            more_practices=[{"name": "other", "api_key": "other-key",
                                             "resources": ["patients"]}])
    daemon.start()

    async def both_synced() -> bool:
        return all([await redis.hget(f"{ns.prefix}:{{{p}}}:cursor:patients", "synced")
                    == b"1" for p in ("main", "other")])
    await wait_until(both_synced, 20, "both practices synced")
    await control.key("main-1", "revoke")
    accepted = (await control.stats())["requests"]["main-1"]
    changed = await control.mutate("patients", ids=ids[:5])

    async def revoked_and_other_goes_on() -> bool:
        evs = await events(redis, ns)
        return bool(of(evs, "notifier.key.revoked", "main")) and \
            len(of(evs, "patient.updated", "other")) == 5
    await wait_until(revoked_and_other_goes_on, 20, "the revocation event")
    await anyio.sleep(1.5)  # many poll intervals: a dead key must stay unused
    daemon.stop()
    daemon.start()          # a restart must not hammer the dead key either
    await anyio.sleep(1.5)
    stats = await control.stats()
    assert stats["requests"]["main-1"] == accepted
    # The 401 on a list, the probe that confirmed it, and one probe by the restart (which
    # re-checks rather than trusting the stored revocation for ever).
    assert stats["rejected"]["main-1"] <= 3
    status = (await anyio.run_process([sys.executable, "-m", "notifier", "status", "--json",
                                       "--config", str(daemon.config)])).stdout.decode()
    practices = {p["name"]: p for p in json.loads(status)["practices"]}
    assert practices["main"]["key"]["state"] == "revoked"
    assert practices["other"]["key"]["state"] == "ok"
    assert "main-1" not in status and "other-key" not in status
    evs = await events(redis, ns)
    (revoked,) = of(evs, "notifier.key.revoked", "main")
    assert "main-1" not in json.dumps(revoked)  # only the key's fingerprint
    assert of(evs, "patient.updated", "main") == []

    await control.add_key("main-2")
    keyfile.write_text("main-2\n")
    daemon.signal(signal.SIGHUP)

    async def restored() -> bool:
        evs = await events(redis, ns)
        return bool(of(evs, "notifier.key.restored", "main")) and \
            len(of(evs, "patient.updated", "main")) == 5
    await wait_until(restored, 20, "the restoration and the missed changes")
    evs = await events(redis, ns)
    assert {e["data"]["record_id"] for e in of(evs, "patient.updated", "main")} == set(changed)
    assert len(of(evs, "notifier.key.revoked", "main")) == 1
    assert of(evs, "notifier.key.revoked", "other") == []


async def test_denied_scope_is_reported_once_and_the_rest_runs(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.add_key("narrow", scopes=["patients:read"])
    await control.seed("patients", 5)
    await control.seed("invoices", 5)
    daemon = daemon_factory(key="narrow", resources=["patients", "invoices"],
                            initial_sync="emit", scope_recheck_interval=0.5)
    daemon.start()

    async def seen() -> bool:
        evs = await events(redis, ns)
        return len(of(evs, "patient.created", "main")) == 5 and \
            bool(of(evs, "notifier.scope.denied", "main"))
    await wait_until(seen, 20, "patients and the denial")
    await anyio.sleep(1.5)  # several re-checks
    evs = await events(redis, ns)
    (denied,) = of(evs, "notifier.scope.denied", "main")
    assert denied["data"]["resource"] == "invoices"


async def test_keepalive_uses_the_key_when_every_resource_is_denied(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    await control.add_key("useless", scopes=[])
    daemon = daemon_factory(key="useless", resources=["patients"], keepalive_interval=1.0,
                            scope_recheck_interval=3600)
    daemon.start()

    async def denied() -> bool:
        return any(e["type"] == "notifier.scope.denied" for e in await events(redis, ns))
    await wait_until(denied, 20, "the denial")
    first = (await control.stats())["requests"]["useless"]
    await anyio.sleep(4.0)
    used = (await control.stats())["requests"]["useless"] - first
    assert 3 <= used <= 5  # /v1/user about every second, and nothing else


async def test_a_key_idle_for_more_than_ten_days_is_reported_at_start(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    from notifier.core.keylife import fingerprint

    await control.add_key("sleepy")
    await redis.hset(f"{ns.prefix}:{{main}}:key", mapping={
        "state": "ok", "fingerprint": fingerprint("sleepy"),
        "last_success_at": str(time.time() - 11 * 86400)})
    daemon = daemon_factory(key="sleepy", resources=["patients"])
    daemon.start()

    async def idle() -> bool:
        return bool(of(await events(redis, ns), "notifier.key.idle", "main"))
    await wait_until(idle, 20, "the idle warning")
    (event,) = of(await events(redis, ns), "notifier.key.idle", "main")
    assert 2.9 <= event["data"]["expires_in_days"] <= 3.1


async def test_a_key_fixed_in_dentally_is_found_by_sighup_restart_and_key_retry(
        redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """The hourly probe is not the only way back: SIGHUP (even with the same key), a
    restart and ``dentally-notifier key retry`` each probe a revoked key at once."""
    await control.add_key("k1")
    ids = await control.seed("patients", 10)
    daemon = daemon_factory(key="k1", resources=["patients"], key_probe_interval=3600)
    daemon.start()

    async def synced() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(synced, 20, "the first sync")

    async def count(type_: str, n: int) -> bool:
        return len(of(await events(redis, ns), type_, "main")) >= n

    async def revoke(n: int) -> None:
        await control.key("k1", "revoke")
        await wait_until(lambda: count("notifier.key.revoked", n), 20, f"revocation {n}")
        await control.mutate("patients", ids=[ids[n]])   # made while the key is dead
        await control.key("k1", "restore")

    async def back(n: int) -> None:
        await wait_until(lambda: count("notifier.key.restored", n), 10, f"restoration {n}")
        await wait_until(lambda: count("patient.updated", n), 10, f"the change of {n}")

    await revoke(1)
    daemon.signal(signal.SIGHUP)            # the config and the key are unchanged
    await back(1)

    await revoke(2)
    daemon.stop()
    daemon.start()
    await back(2)

    await revoke(3)
    began = time.monotonic()
    done = await anyio.run_process([sys.executable, "-m", "notifier", "key", "retry",
                                    "main", "--config", str(daemon.config)], check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "ok" in out and time.monotonic() - began < 10
    await back(3)
    evs = await events(redis, ns)
    assert len(of(evs, "notifier.key.revoked", "main")) == 3
    assert len(of(evs, "notifier.key.restored", "main")) == 3
    assert "k1" not in out


async def test_key_rotation_by_file_and_reload_then_by_restart_loses_and_repeats_nothing(
        tmp_path: Path, redis: Redis, ns: Namespace, control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    """docs/deploy.md's rotation procedures, the daemon's side: C (a key file outside the
    credentials, atomically replaced, then SIGHUP) and A (a restart), with changes
    flowing throughout; each old key is revoked once status shows the new one."""
    from notifier.core.keylife import fingerprint

    for k in ("rot-1", "rot-2", "rot-3"):
        await control.add_key(k)
    keyfile = tmp_path / "main-api-key"
    keyfile.write_text("rot-1\n")
    ids = await control.seed("patients", 200)
    daemon = daemon_factory(resources=["patients"], api_key_file=str(keyfile))
    daemon.start()

    async def synced() -> bool:
        return await redis.hget(f"{ns.prefix}:{{main}}:cursor:patients", "synced") == b"1"
    await wait_until(synced, 20, "the first sync")
    todo = list(ids)
    changed: list[str] = []
    changing = True

    async def keep_changing() -> None:
        while changing and todo:
            changed.extend(await control.mutate("patients", ids=[todo.pop()]))
            await anyio.sleep(0.05)

    async def using(key: str) -> None:
        async def ok() -> bool:
            state = await redis.hgetall(f"{ns.prefix}:{{main}}:key")
            return state.get(b"fingerprint") == fingerprint(key).encode() and \
                state.get(b"state") == b"ok"
        await wait_until(ok, 15, f"status to show {key}'s fingerprint")

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_changing)
        await anyio.sleep(0.5)
        new = tmp_path / ".main-api-key.new"        # C: atomic replace, then reload
        new.write_text("rot-2\n")
        new.rename(keyfile)
        daemon.signal(signal.SIGHUP)
        await using("rot-2")
        await control.key("rot-1", "revoke")
        await anyio.sleep(0.5)
        keyfile.write_text("rot-3\n")                # A: a restart
        daemon.stop()
        daemon.start()
        await using("rot-3")
        await control.key("rot-2", "revoke")
        await anyio.sleep(0.5)
        changing = False

    async def all_published() -> bool:
        evs = of(await events(redis, ns), "patient.updated", "main")
        return {e["data"]["record_id"] for e in evs} >= set(changed)
    await wait_until(all_published, 20, "every change made during the rotations")
    evs = await events(redis, ns)
    assert len({e["id"] for e in evs}) == len(evs), "an event was published twice"
    updated = [e["data"]["record_id"] for e in of(evs, "patient.updated", "main")]
    assert sorted(updated) == sorted(changed)
    assert of(evs, "notifier.key.revoked", "main") == []
    stats = await control.stats()
    assert stats["rejected"].get("rot-1", 0) == 0 and stats["rejected"].get("rot-2", 0) == 0
    assert len(changed) > 20
