"""The endpoint for Dentally's own webhooks: ``POST /dentally/<practice>`` on ``[ingest]
listen``.

A webhook is only a hint (:mod:`notifier.core.hints`): this endpoint checks its signature
before anything else, turns it into a :class:`~notifier.core.hints.Hint` and hands it to
the practice's runner, in memory, then answers 202. It never calls Dentally, never
touches Redis and never reads a file while answering, so it answers in well under 50 ms
and an unsigned, forged, replayed or oversized request costs the practice nothing. Every
refusal is counted (``dentally_notifier_webhook_hints{outcome}``); warnings about them are
logged at most once a minute, so a flood cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.config import IngestConfig, PracticeConfig
from notifier.core import hints
from notifier.errors import ConfigError
from notifier.ops.metrics import Metrics

log = logging.getLogger("notifier.ingest")

WARN_EVERY = 60.0
BODY_TIMEOUT = 10.0
"""Seconds a sender gets to deliver its body: a slow-body client must not hold a
connection slot (256 in all) for ever and starve Dentally's own webhooks."""

Route_ = Callable[[str], Callable[[hints.Hint], None] | None]
"""A practice's name -> where its hints go (None while it is not running)."""


class _TooLarge(Exception):
    pass


@dataclass
class _Practice:
    secrets: list[str]
    resources: frozenset[str]
    replays: hints.Replays


class Ingest:
    """What the endpoint knows: each hinted practice's secrets (read at start and on
    reload, never per request), its replay memory, and where its hints go."""

    def __init__(self, cfg: IngestConfig, route: Route_, metrics: Metrics | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.route, self.metrics, self._wall = route, metrics, wall
        self.practices: dict[str, _Practice] = {}
        self._warned: dict[str, float] = {}
        self.body_timeout = BODY_TIMEOUT
        self.configure(cfg, [])

    def configure(self, cfg: IngestConfig, practices: list[PracticeConfig]) -> None:
        """Take the settings and re-read the secrets (start, SIGHUP). A practice whose
        secret cannot be read is logged and refused (404) until it can."""
        self.cfg = cfg
        self.scheme = hints.Scheme(cfg.signature_header, cfg.signature_encoding,
                                   cfg.signature_prefix)
        self.proxies = hints.networks(cfg.trusted_proxies)
        old, self.practices = self.practices, {}
        for p in practices:
            if not p.hinted:
                continue
            try:
                secrets = p.webhook_secret_values()
            except ConfigError as exc:
                log.error("%s; its webhooks are refused until it can be read", exc,
                          extra={"practice": p.name})
                continue
            kept = old.get(p.name)
            replays = kept.replays if kept is not None \
                else hints.Replays(cfg.replay_window)
            replays.window = cfg.replay_window
            self.practices[p.name] = _Practice(secrets, frozenset(p.resources), replays)

    def _count(self, practice: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.hints.labels(practice, outcome).inc()

    def _warn(self, practice: str, what: str, request: Request) -> None:
        now = self._wall()
        if now - self._warned.get(what, -WARN_EVERY) < WARN_EVERY:
            return
        self._warned[what] = now
        peer = request.client.host if request.client else None
        client = hints.client_address(peer, request.headers.get("x-forwarded-for"),
                                      self.proxies)
        log.warning("Dentally webhook refused: %s (from %s; counted in "
                    "dentally_notifier_webhook_hints, logged at most once a minute)", what,
                    client, extra={"practice": practice})

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.max_body
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def receive(self, request: Request) -> Response:
        name = request.path_params["practice"]
        p = self.practices.get(name)
        if p is None:
            self._count("", "unknown_practice")
            return JSONResponse({"error": "unknown practice"}, status_code=404)
        signature = request.headers.get(self.scheme.header)
        if not signature:
            self._count(name, "unsigned")
            self._warn(name, f"no {self.scheme.header} header", request)
            return JSONResponse({"error": "unsigned"}, status_code=401)
        try:
            with anyio.move_on_after(self.body_timeout) as deadline:
                body = await self._body(request)
            if deadline.cancelled_caught:
                self._count(name, "too_slow")
                self._warn(name, f"body not received in {self.body_timeout:g} s", request)
                return JSONResponse({"error": "body too slow"}, status_code=408)
        except _TooLarge:
            self._count(name, "too_large")
            self._warn(name, f"body over {self.cfg.max_body} bytes", request)
            return JSONResponse({"error": "too large"}, status_code=413)
        except ClientDisconnect:
            self._count(name, "disconnected")
            return Response(status_code=400)
        if not hints.verify(p.secrets, body, signature, self.scheme):
            self._count(name, "bad_signature")
            self._warn(name, "bad signature", request)
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if not p.replays.first(body, self._wall()):
            self._count(name, "replayed")
            return JSONResponse({"ok": True, "ignored": "seen before"}, status_code=202)
        try:
            hint = hints.parse_hint(body, p.resources)
        except hints.HintError as exc:
            # 2xx all the same: Dentally switches a webhook off after 50 failures.
            self._count(name, "ignored")
            log.info("Dentally webhook ignored: %s", exc, extra={"practice": name})
            return JSONResponse({"ok": True, "ignored": str(exc)}, status_code=202)
        deliver = self.route(name)
        if deliver is not None:
            deliver(hint)
        self._count(name, "accepted")
        return JSONResponse({"ok": True, "resource": hint.resource}, status_code=202)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/dentally/{practice}", self.receive,
                                       methods=["POST"])])
