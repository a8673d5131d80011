"""``dentally-notifier demo``: everything in one process, so events flow with nothing set up.

The sandbox on a free loopback port, an embedded Valkey (unless ``REDIS_URL`` is set), the
daemon polling the sandbox every 30 s and taking the sandbox's Dentally-style webhooks as
hints (so patients, appointments and payments arrive within a second of a change), a task
that keeps changing sandbox records, and a local webhook receiver that verifies each
delivery's signature and prints it with how long after the change it came.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import secrets
import signal
import time
import uuid
from functools import partial

import anyio
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from notifier import config, signing
from notifier.core.timefmt import parse_ms
from notifier.ops import logging as logsetup
from notifier.ops.embedded import redis_server
from notifier.ops.http import bind, serve_app
from notifier.ops.text import describe
from notifier.sandbox.server import serve
from notifier.sandbox.state import Sandbox
from notifier.service import daemon
from notifier.store.connection import delete_prefix, redact

DEMO_KEY = "demo-key"


NEXT_STEPS = """
demo stopped. What to try next:
  * The README's five-minute trial: `dentally-notifier sandbox --port 8080` in one
    terminal, your own config.toml pointing at it (base_url, allow_private), then
    `check`, `run`, `status` and `tail` in another.
  * Point a subscriber at your own endpoint and verify the signatures with any Standard
    Webhooks library; `dentally-notifier check --send-test` sends it a signed test event.
  * Change sandbox records yourself: PATCH /_sandbox/records/patients/<id> (docs/sandbox.md).
  * Install it for real: docs/deploy.md (systemd), compose.yaml (containers)."""


def receiver_app(secret: str, path: str = "/hook") -> Starlette:
    """A webhook receiver at ``path`` that checks each signature and prints one line per
    event (the demo's, and the sandbox's ``/_sandbox/webhook``)."""

    async def hook(request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the demo stopping while a delivery was in flight
            return Response(status_code=400)
        headers = {k.lower(): v for k, v in request.headers.items()}
        ok = signing.verify([secret], headers, body, time.time())
        try:
            event = json.loads(body)
        except ValueError:
            print(f"  webhook  not JSON ({len(body)} bytes)", flush=True)
            return Response(status_code=400)
        mark = "signature ok" if ok else "BAD SIGNATURE"
        print(f"  webhook  {describe(event)}  [{mark}]{_latency(event)}", flush=True)
        return Response(status_code=204 if ok else 400)

    return Starlette(routes=[Route(path, hook, methods=["POST"])])


DEMO_STATES = ["Confirmed", "Arrived", "In surgery", "Completed", "Cancelled",
               "Did not attend"]


def _meaningful_change(sb: Sandbox, rng: random.Random) -> None:
    """One edit of the kind integrators act on, so the demo shows derived events too
    (``appointment.cancelled``, ``patient.archived``, ``payment.refunded``, ...)."""
    what = rng.choice(["state", "state", "reschedule", "archive", "refund"])
    if what in ("state", "reschedule"):
        table = sb.tables["appointments"]
        if not table.rows:
            return
        rid = rng.choice(list(table.rows))
        if what == "state":
            sb.update("appointments", rid, {"state": rng.choice(DEMO_STATES)})
            return
        row = table.rows[rid]
        start = parse_ms(str(row["start_time"])) + rng.randint(1, 7) * 86_400_000
        sb.update("appointments", rid, {"start_time": sb.stamp(start), "finish_time":
                                        sb.stamp(start + int(row["duration"]) * 60_000)})
    elif what == "archive":
        table = sb.tables["patients"]
        if not table.rows:
            return
        rid = rng.choice(list(table.rows))
        if table.rows[rid].get("active") is False:
            sb.update("patients", rid, {"active": True, "archived_reason": None})
        else:
            sb.update("patients", rid, {"active": False, "archived_reason": "Moved away"})
    else:
        sb.create("payments", {"amount": f"-{rng.choice([15, 25, 40, 60])}.0",
                               "method": "Card", "reference": "refund"})


def _latency(event: dict[str, object]) -> str:
    """``  0.4 s after the change`` for a record event (the demo's clocks are one clock)."""
    data = event.get("data")
    stamp = data.get("updated_at") if isinstance(data, dict) else None
    if not isinstance(stamp, str) or str(event.get("type", "")).endswith("deleted"):
        return ""
    try:
        seconds = time.time() - parse_ms(stamp) / 1000
    except ValueError:
        return ""
    return f"  {seconds:.2f} s after the change" if seconds < 120 else ""


async def _make_changes(sb: Sandbox) -> None:
    rng = random.Random()
    while True:
        await anyio.sleep(rng.uniform(0.8, 2.0))
        if rng.random() < 0.35:
            _meaningful_change(sb, rng)
            continue
        resource = rng.choice(["patients", "patients", "appointments", "invoices", "payments"])
        table = sb.tables[resource]
        if rng.random() < 0.3 or not table.rows:
            sb.create(resource)
        else:
            sb.update(resource, rng.choice(list(table.rows)))


async def run(duration: float | None = None, records: int = 20) -> None:
    logsetup.setup("text", "warning")
    logging.getLogger("notifier").setLevel(logging.INFO)
    embedded = not os.environ.get("REDIS_URL")
    with redis_server() as url:
        sb = Sandbox()
        sb.add_key(DEMO_KEY)
        # A one-minute rate window, so the demo's fast polls fit the sandbox's budget.
        sb.quirks.update({"rate_window": 60.0, "rate_limit": 1200})
        sb.seed("patients", records, 30)
        sb.seed("appointments", records // 2, 30)
        sb.seed("invoices", records // 4, 30)
        sb.seed("payments", records // 4, 30)
        sock = bind()
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        tag = uuid.uuid4().hex[:8]
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        hook_sock = bind()
        hook_url = f"http://127.0.0.1:{hook_sock.getsockname()[1]}/hook"
        ingest_sock = bind()
        ingest = f"127.0.0.1:{ingest_sock.getsockname()[1]}"
        dentally_secret = secrets.token_hex(16)
        # The sandbox sends its Dentally-style webhooks to the daemon's ingest endpoint.
        sb.webhooks.configure({"url": f"http://{ingest}/dentally/demo",
                               "secret": dentally_secret})
        ingest_sock.close()   # the daemon binds it again
        settings = config.parse({
            "redis": {"url": url, "stream": f"dentally-notifier-demo-{tag}:events",
                      "prefix": f"dentally-notifier-demo-{tag}"},
            "practices": [{"name": "demo", "region": "sandbox", "base_url": base_url,
                           "api_key": DEMO_KEY, "poll_interval": 30, "initial_sync": "emit",
                           "overlap": 5, "rate_window": 60, "max_requests_per_hour": 36000,
                           "webhook_secret": dentally_secret}],
            "ingest": {"listen": ingest},
            "subscribers": [{"name": "demo-receiver", "url": hook_url, "secret": secret,
                             "allow_private": True, "start": "beginning",
                             "retry_schedule": [1, 5, 30]}],
        }, "demo")
        print(f"Dentally sandbox: {base_url}   Redis: {redact(url)}   "
              f"stream: {settings.redis.stream}   webhook receiver: {hook_url}", flush=True)
        print("The daemon publishes the sandbox's records, then every change the demo "
              "makes, and what it means (appointment.cancelled, patient.archived, "
              "invoice.paid, ...); each arrives at the receiver as a signed webhook "
              "(Ctrl-C to stop).\n"
              "Polls come every 30 s; the sandbox's own Dentally webhooks (patients, "
              f"appointments, payments; to http://{ingest}/dentally/demo) make them come "
              "at once. Invoices have no Dentally webhooks: they wait for their poll.",
              flush=True)
        redis = Redis.from_url(url)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, sb, sock)
                # A throwaway embedded server needs no persistence: no warning about it.
                tg.start_soon(partial(daemon.run, settings, False,
                                      store_warnings=not embedded))
                tg.start_soon(serve_app, receiver_app(secret), hook_sock)
                tg.start_soon(_make_changes, sb)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    with anyio.move_on_after(duration if duration else float("inf")):
                        async for _ in signals:
                            break
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await delete_prefix(redis, settings.redis.prefix)
                await redis.aclose()
        print(NEXT_STEPS, flush=True)
