"""``dentally-notifier sandbox``: the sandbox alone, on a port, until interrupted."""

from __future__ import annotations

import argparse
import errno
import signal
import sys

import anyio

from notifier.errors import UsageError
from notifier.ops.http import bind
from notifier.sandbox.server import serve
from notifier.sandbox.state import Sandbox


async def run(args: argparse.Namespace) -> None:
    sb = Sandbox()
    sb.add_key(args.key)
    for resource in ("patients", "appointments", "invoices", "payments"):
        sb.seed(resource, getattr(args, resource), args.spread_days)
    sb.seed("sites", 3, args.spread_days)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        hint = "; pick another with --port N (0: any free port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise UsageError(f"cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}{hint}") from None
    port = sock.getsockname()[1]
    print(f"Dentally sandbox on http://{args.host}:{port}  (API key: {args.key}; "
          f"control API under /_sandbox)", file=sys.stderr, flush=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, sb, sock)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                tg.cancel_scope.cancel()
                break
