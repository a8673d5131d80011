"""The command line as a user runs it: real processes, the sandbox on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from tests.conftest import Namespace
from tests.integration.daemon import write_config


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "notifier", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ})


async def test_check_passes_then_names_a_denied_scope(
        tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread,
        control: SandboxControl) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url=sandbox.url, key=sandbox.key or "")
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "practice main: key" in done.stdout and "practice main: patients" in done.stdout
    assert "practice main: rate budget" in done.stdout
    await control.add_key("narrow", scopes=["patients:read", "invoices:read",
                                            "payments:read"])
    cfg = write_config(tmp_path / "n.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url=sandbox.url, key="narrow")
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 3
    line = next(ln for ln in done.stdout.splitlines() if "main: appointments" in ln)
    assert "FAIL" in line and "scope" in line
    assert "narrow" not in done.stdout  # the key itself is never printed


async def test_check_fails_on_revoked_key_and_unreachable_redis(
        tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread,
        control: SandboxControl) -> None:
    await control.add_key("gone")
    await control.key("gone", "revoke")
    cfg = write_config(tmp_path / "c.toml", redis_url="redis://127.0.0.1:1/0",
                       prefix=ns.prefix, stream=ns.stream, base_url=sandbox.url, key="gone")
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 3
    assert "revoked" in done.stdout and "cannot reach Redis" in done.stdout


async def test_check_says_when_intervals_are_stretched_to_fit_the_share(
        tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url=sandbox.url, key=sandbox.key or "",
                       resources=["patients", "appointments", "invoices"], poll_interval=1,
                       max_requests_per_hour=360, rate_window=3600)
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr   # a warning, not a failure
    line = next(ln for ln in done.stdout.splitlines() if "rate budget" in ln)
    assert "warn" in line
    assert line.endswith("patients, appointments, invoices every 1 s need 10,800 "
                         "requests/h; the share is 360; polling every 30 s instead"), line


def test_run_exits_4_when_redis_is_unreachable(tmp_path: Path, ns: Namespace) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url="redis://127.0.0.1:1/0",
                       prefix=ns.prefix, stream=ns.stream, base_url="http://127.0.0.1:9",
                       key="k")
    done = run_cli("run", "--config", str(cfg))
    assert done.returncode == 4 and "cannot reach Redis" in done.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    done = run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "cannot read config file" in done.stderr


@pytest.mark.parametrize("args", [(), ("frobnicate",)])
def test_bad_usage_exits_2(args: tuple[str, ...]) -> None:
    assert run_cli(*args).returncode == 2


def test_demo_shows_events_within_10_seconds() -> None:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "notifier", "demo", "--duration", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            if "webhook " in line and "signature ok" in line:
                seen.append((time.monotonic() - started, line))
                if len(seen) >= 5 and any(".updated" in ln for _, ln in seen):
                    break
    finally:
        proc.terminate()
        proc.wait(15)
    assert seen and seen[0][0] < 10, seen[:3]
    assert any("patient.created" in ln for _, ln in seen)
    assert proc.returncode == 0


async def test_tail_shows_recent_events_filtered_by_type(
        tmp_path: Path, redis_url: str, ns: Namespace, store: Any) -> None:
    from datetime import UTC, datetime

    from notifier.events import record_event

    now = datetime.now(UTC)
    for resource, rid in (("patients", 1), ("invoices", 2), ("patients", 3)):
        e = record_event("main", resource, "created",
                         {"id": rid, "first_name": f"P{rid}", "last_name": "X"}, now)
        await store.redis.xadd(ns.stream, dict(e.stream_fields()))
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url="http://127.0.0.1:9", key="k")
    done = run_cli("tail", "--config", str(cfg), "--no-follow", "--type", "patient.*")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("patient.created" in ln for ln in lines)
    assert "patients/1" in lines[0] and "patients/3" in lines[1]


def test_store_risks_name_eviction_and_missing_persistence() -> None:
    from notifier.service.daemon import store_risks

    assert store_risks({"maxmemory_policy": "noeviction", "aof_enabled": 1}) == []
    risks = dict(store_risks({"maxmemory_policy": "allkeys-lru", "aof_enabled": 0}))
    assert "allkeys-lru" in risks["redis eviction"]
    assert "appendonly is off" in risks["redis persistence"]
