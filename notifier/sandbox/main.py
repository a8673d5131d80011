"""``dentally-notifier sandbox``: the sandbox alone, on a port, until interrupted."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from functools import partial

import anyio
from starlette.applications import Starlette
from starlette.routing import Mount

from notifier import signing
from notifier.errors import UsageError
from notifier.ops.http import bind, serve_app
from notifier.sandbox.app import build_app
from notifier.sandbox.server import SANDBOX_CONFIG
from notifier.sandbox.state import Sandbox

WEBHOOK_PATH = "/_sandbox/webhook"
# A fixed secret for local trials, so that a config can be written before the sandbox
# starts: ``whsec_`` + base64("dentally-notifier-sandbox"). Never use it for real.
TRIAL_SECRET = "whsec_ZGVudGFsbHktbm90aWZpZXItc2FuZGJveA=="


async def run(args: argparse.Namespace) -> None:
    from notifier.demo import receiver_app

    secret = args.webhook_secret or TRIAL_SECRET
    try:
        signing.secret_key(secret)
    except ValueError as exc:
        raise UsageError(f"--webhook-secret: {exc}") from None
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
    base = f"http://{args.host}:{port}"
    print(f"Dentally sandbox on {base}  (API key: {args.key}; control API under /_sandbox)\n"
          f"Webhook receiver on {base}{WEBHOOK_PATH}  (secret: {secret}): "
          "prints each event it gets, with its signature checked", file=sys.stderr,
          flush=True)
    # The receiver's route first; everything else is the sandbox.
    receiver = receiver_app(secret, WEBHOOK_PATH)
    app = Starlette(routes=[*receiver.routes, Mount("", app=build_app(sb))])
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve_app, app, sock, **SANDBOX_CONFIG))
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                tg.cancel_scope.cancel()
                break
