"""The notify protocol over a real datagram socket: READY, WATCHDOG, STATUS, STOPPING, and a
wedged loop that stops the watchdog pings."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from notifier.core.health import Health
from notifier.ops.systemd import SystemdNotifier
from notifier.sandbox.control import SandboxControl
from notifier.service import daemon as daemon_module
from tests.integration.daemon import Daemon


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    yield path, sock
    sock.close()


def drain(sock: socket.socket, seconds: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            out.append(sock.recv(4096).decode())
    return out


async def test_daemon_speaks_the_notify_protocol(
        notify_socket: tuple[str, socket.socket], control: SandboxControl,
        daemon_factory: Callable[..., Daemon]) -> None:
    path, sock = notify_socket
    await control.seed("patients", 3)
    d = daemon_factory(resources=["patients"])
    d.start(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    messages = await anyio.to_thread.run_sync(drain, sock, 4.0)
    ready = [m for m in messages if "READY=1" in m]
    assert len(ready) == 1 and "STATUS=1 practice, 0 subscribers, lag 0" in ready[0]
    assert messages.index(ready[0]) < messages.index("WATCHDOG=1")
    assert messages.count("WATCHDOG=1") >= 5   # every 0.2 s while all is well
    d.signal(signal.SIGTERM)
    tail = await anyio.to_thread.run_sync(drain, sock, 2.0)
    assert any("STOPPING=1" in m for m in tail)
    assert d.proc is not None and d.proc.wait(10) == 0


async def test_a_wedged_loop_stops_the_watchdog(
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    health = Health()
    health.beat("main/patients", time.time(), 0.5)   # promises a beat within 0.5 s, never
    notify = SystemdNotifier(path)

    async def line() -> str:
        return "1 practices"

    async def watch() -> None:
        await daemon_module.watch(notify, health, line, 0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        early = await anyio.to_thread.run_sync(drain, sock, 0.4)
        late = await anyio.to_thread.run_sync(drain, sock, 0.6)
        tg.cancel_scope.cancel()
    assert early.count("WATCHDOG=1") >= 4
    assert "WATCHDOG=1" not in late[2:]    # after the missed promise: silence

