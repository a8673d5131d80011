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


DERIVED_SHOWN = ("appointment.state_changed", "patient.archived", "payment.refunded",
                 "invoice.overdue", "appointment.rescheduled", "patient.contact_changed")


def test_demo_shows_events_within_10_seconds() -> None:
    """As a new user runs it (no REDIS_URL: its embedded server): events within 10 s, no
    warning about the throwaway server's persistence, real-looking edits, and it ends
    with what to try next."""
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "notifier", "demo", "--duration", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    seen = []
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "webhook " in line and "signature ok" in line:
                seen.append((time.monotonic() - started, line))
                if len(seen) >= 5 and any(".updated" in ln for _, ln in seen) \
                        and any(t in ln for _, ln in seen for t in DERIVED_SHOWN):
                    break
    finally:
        proc.terminate()
        proc.wait(15)
    lines += proc.stdout.read().splitlines(keepends=True)
    assert seen and seen[0][0] < 10, seen[:3]
    assert any("patient.created" in ln for _, ln in seen)
    assert proc.returncode == 0
    out = "".join(lines)
    assert "appendonly" not in out and "Traceback" not in out, out
    assert '"rev"' not in out, out
    # Negative amounts only on the refunds the demo makes (payments taken are positive).
    assert all("payment" in ln for ln in lines if "amount -" in ln), out
    # What changes mean, besides the changes themselves.
    assert any(t in out for t in DERIVED_SHOWN), out
    assert "What to try next" in out
    assert lines[-1].strip().startswith("* Install it for real"), lines[-3:]


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
    from notifier.store.connection import store_risks

    assert store_risks({"maxmemory_policy": "noeviction", "aof_enabled": 1}) == []
    risks = dict(store_risks({"maxmemory_policy": "allkeys-lru", "aof_enabled": 0}))
    assert "allkeys-lru" in risks["redis eviction"]
    assert "appendonly is off" in risks["redis persistence"]


async def test_check_checks_subscribers_and_sends_a_signed_test(
        tmp_path: Path, redis_url: str, ns: Namespace, sandbox: SandboxThread) -> None:
    import json

    import standardwebhooks

    from tests.receiver import Receiver

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with Receiver() as rx:
        good = {"name": "crm", "url": rx.url, "secret": secret, "allow_private": True,
                "events": ["patient.*", "notifier.*"]}
        cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                           stream=ns.stream, base_url=sandbox.url, key=sandbox.key or "",
                           subscribers=[good])
        done = run_cli("check", "--config", str(cfg), "--send-test")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 practice, 1 subscriber" in done.stdout
        test_line = next(ln for ln in done.stdout.splitlines() if "crm: test" in ln)
        assert "ok" in test_line and "HTTP 200" in test_line
        [got] = rx.received
        body = json.loads(got.body)
        assert body["type"] == "notifier.test" and body["data"]["subscriber"] == "crm"
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)  # raises if bad
        # without --send-test nothing is posted
        assert run_cli("check", "--config", str(cfg)).returncode == 0
        assert len(rx.received) == 1

    typo = {**good, "name": "typo", "url": "https://crm.example.com/h",
            "events": ["patients.*"]}
    nowhere = {**good, "name": "nowhere", "url": "https://nonexistent.invalid/h"}
    refused = {**good, "name": "down", "url": "http://127.0.0.1:9/h"}
    cfg = write_config(tmp_path / "b.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url=sandbox.url, key=sandbox.key or "",
                       subscribers=[typo, nowhere, refused])
    done = run_cli("check", "--config", str(cfg), "--send-test")
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.splitlines()

    def line(start: str) -> str:
        return next(ln for ln in lines if ln.startswith(start))

    assert "FAIL" in line("subscriber typo: events") and "'patient.*'" in line(
        "subscriber typo: events")
    assert "FAIL" in line("subscriber nowhere: url")
    assert "cannot resolve nonexistent.invalid" in line("subscriber nowhere: url")
    down = line("subscriber down: test")
    assert "FAIL" in down and "http://127.0.0.1:9/h" in down  # names what it tried


async def test_check_names_the_host_it_tried(tmp_path: Path, redis_url: str,
                                             ns: Namespace) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_url, prefix=ns.prefix,
                       stream=ns.stream, base_url="http://127.0.0.1:9", key="k")
    done = run_cli("check", "--config", str(cfg))
    assert done.returncode == 3
    line = next(ln for ln in done.stdout.splitlines() if "practice main: key" in ln)
    assert "FAIL" in line and "http://127.0.0.1:9" in line
