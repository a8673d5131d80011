"""Serving an ASGI app on a socket we bound ourselves (sandbox, demo receiver, metrics)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


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


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for a child process that binds it itself)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make_server(app: Any, **config: Any) -> QuietServer:
    """A quiet uvicorn server for ``app``; ``config`` adds uvicorn settings."""
    return QuietServer(uvicorn.Config(app, log_level="warning", access_log=False,
                                      lifespan="off", **config))


async def serve_app(app: Any, sock: socket.socket, **config: Any) -> None:
    """Serve ``app`` on ``sock`` until cancelled."""
    server = make_server(app, **config)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True
