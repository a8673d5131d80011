"""Running the sandbox: in the current event loop, or in a background thread for tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn

from notifier.sandbox.app import build_app
from notifier.sandbox.state import Sandbox

DEFAULT_KEY = "sandbox-key"


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back from the socket)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this on Linux: without it Nagle's algorithm holds a small
    # body written after its headers until the client's delayed ACK, 40 ms later.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def make_server(sb: Sandbox, sock: socket.socket) -> QuietServer:
    config = uvicorn.Config(build_app(sb), log_level="warning", access_log=False,
                            date_header=False, server_header=False, lifespan="off",
                            fd=None)
    server = QuietServer(config)
    server._sandbox_socket = sock  # type: ignore[attr-defined]
    return server


async def serve(sb: Sandbox, sock: socket.socket) -> None:
    """Serve ``sb`` on ``sock`` until cancelled."""
    server = make_server(sb, sock)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True


class AppThread:
    """Any ASGI app on a loopback port, in its own thread and event loop (tests, demo)."""

    def __init__(self, app: Any) -> None:
        self._sock = bind()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = QuietServer(config)
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
        super().__init__(None)
        self._server = make_server(self.sandbox, self._sock)

    def start(self) -> SandboxThread:
        super().start()
        return self

    def __enter__(self) -> SandboxThread:
        return self.start()
