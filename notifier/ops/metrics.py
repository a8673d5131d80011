"""Prometheus metrics and a health check, on ``[metrics] listen`` (off unless configured).

Counters and histograms are updated where things happen (polls, events, deliveries);
gauges that live in Redis (stream length, lag, retries, dead letters) and in the practice
runners (key state, rate budget) are refreshed every few seconds by the daemon. No label
ever carries a secret: practices, resources, subscribers and event types only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.core.health import Health

P = "dentally_notifier_"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.polls = Counter(P + "polls", "Polls by outcome",
                             ["practice", "resource", "outcome"], registry=r)
        self.poll_seconds = Histogram(P + "poll_seconds", "Poll duration",
                                      ["practice", "resource"], registry=r,
                                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                               300, 1800))
        self.events = Counter(P + "events_published", "Events appended to the stream",
                              ["practice", "type"], registry=r)
        self.window_rereads = Counter(P + "window_rereads",
                                      "Windows read again because a read was incomplete "
                                      "(unstable pages, rows changing while paged)",
                                      ["practice", "resource"], registry=r)
        self.windows_incomplete = Counter(P + "windows_incomplete",
                                          "Windows left for the next poll after too many "
                                          "re-reads, or accepted by a sweep from its union",
                                          ["practice", "resource"], registry=r)
        self.snapshots_unreadable = Counter(P + "snapshots_unreadable",
                                            "Stored snapshots that did not decode (treated "
                                            "as missing)", ["practice", "resource"],
                                            registry=r)
        self.reconcile_suspicious = Counter(P + "reconcile_suspicious",
                                            "Sweeps whose deletions were held (more than "
                                            "max_delete_fraction)", ["practice", "resource"],
                                            registry=r)
        self.api_requests = Gauge(P + "api_requests_window",
                                  "Dentally requests this daemon made in the rate window",
                                  ["practice"], registry=r)
        self.budget_left = Gauge(P + "rate_budget_remaining",
                                 "Requests left in the key's window (server's count)",
                                 ["practice"], registry=r)
        self.key_ok = Gauge(P + "key_ok", "1 while the practice's key works, 0 if revoked",
                            ["practice"], registry=r)
        self.deliveries = Counter(P + "deliveries", "Delivery attempts by outcome",
                                  ["subscriber", "outcome"], registry=r)
        self.skipped = Counter(P + "deliveries_skipped",
                               "Events not sent to a subscriber by its filters (practice, "
                               "site, changed) or because an update changed only fields it "
                               "may not see (excluded_only)", ["subscriber", "reason"],
                               registry=r)
        self.delivery_seconds = Histogram(P + "delivery_seconds", "Delivery attempt latency",
                                          ["subscriber"], registry=r)
        self.retries_pending = Gauge(P + "retries_pending", "Events waiting for a retry",
                                     ["subscriber"], registry=r)
        self.dead_letters = Gauge(P + "dead_letters", "Events in the dead letters",
                                  ["subscriber"], registry=r)
        self.lag = Gauge(P + "consumer_lag", "Events not yet read or acknowledged",
                         ["subscriber"], registry=r)
        self.hints = Counter(P + "webhook_hints", "Dentally webhooks received, by outcome "
                             "(accepted, replayed, ignored, unsigned, bad_signature, "
                             "too_large, too_slow, unknown_practice)", ["practice", "outcome"],
                             registry=r)
        self.hint_polls = Counter(P + "hint_polls", "Polls a Dentally webhook brought "
                                  "forward", ["practice", "resource"], registry=r)
        self.stream_length = Gauge(P + "stream_length", "Events in the stream", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def app(metrics: Metrics, health: Health, wall: Callable[[], float] = time.time) -> Starlette:
    async def get_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        report = health.report(wall())
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    return Starlette(routes=[Route("/metrics", get_metrics), Route("/healthz", healthz)])
