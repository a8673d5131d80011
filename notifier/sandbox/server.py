"""Running the sandbox: in the current event loop, or in a background thread for tests."""

from __future__ import annotations

import socket
import threading
from typing import Any

import anyio

from notifier.ops.http import bind, make_server, serve_app
from notifier.sandbox.app import build_app
from notifier.sandbox.state import Sandbox

DEFAULT_KEY = "sandbox-key"


# The sandbox stamps its own Date (from its movable clock) and names no server.
SANDBOX_CONFIG: dict[str, Any] = {"date_header": False, "server_header": False}


async def serve(sb: Sandbox, sock: socket.socket) -> None:
    """Serve ``sb`` on ``sock`` until cancelled."""
    await serve_app(build_app(sb), sock, **SANDBOX_CONFIG)


class AppThread:
    """Any ASGI app on a loopback port, in its own thread and event loop (tests, demo)."""

    def __init__(self, app: Any, **config: Any) -> None:
        self._sock = bind()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = make_server(app, **config)
        self._thread = threading.Thread(target=self._run, name="app", daemon=True)

    def _run(self) -> None:
        anyio.run(self._server.serve, [self._sock])

    def start(self) -> AppThread:
        self._thread.start()
        for _ in range(400):
            if self._server.started:
                return self
            threading.Event().wait(0.025)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> AppThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class SandboxThread(AppThread):
    """The sandbox on a loopback port, in its own thread and event loop (for tests)."""

    def __init__(self, sandbox: Sandbox | None = None, key: str | None = DEFAULT_KEY) -> None:
        self.sandbox = sandbox or Sandbox()
        if key is not None:
            self.sandbox.add_key(key)
        self.key = key
        super().__init__(build_app(self.sandbox), **SANDBOX_CONFIG)

    def start(self) -> SandboxThread:
        super().start()
        return self

    def __enter__(self) -> SandboxThread:
        return self.start()
