"""``dentally-notifier check``: config, Redis, every practice's key and scopes, and every
subscriber (URL, DNS, event patterns, optionally a signed test POST), as a table.

Every failure names the host it tried."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import urlsplit

import anyio
from redis.exceptions import RedisError

from notifier import config
from notifier.config import PracticeConfig, Settings, SubscriberConfig
from notifier.core import hints, resources
from notifier.core.patterns import check_patterns
from notifier.core.text import plural
from notifier.delivery import safety
from notifier.delivery.sender import Sender
from notifier.dentally.client import DentallyClient
from notifier.errors import (
    AuthError,
    ConfigError,
    DentallyError,
    RateLimited,
    ScopeError,
    StoreError,
)
from notifier.events import known_event_types, notifier_event
from notifier.service.pacing import plan_for
from notifier.store.connection import connect, redact, store_risks

Row = tuple[str, str, str]


async def _redis_rows(settings: Settings) -> list[Row]:
    where = f"redis {redact(settings.redis.url)}"
    try:
        redis = await connect(settings.redis.url)
    except StoreError as exc:
        return [(where, "FAIL", str(exc))]
    try:
        info = await redis.info()
        version = info.get("valkey_version") or info.get("redis_version", "?")
        rows: list[Row] = [(where, "ok", f"server {version}")]
        rows += [(what, "warn", warning) for what, warning in store_risks(info)]
        return rows
    except RedisError as exc:
        return [(where, "FAIL", str(exc))]
    finally:
        await redis.aclose()


async def _practice_rows(settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for p in settings.practices:
        plan = plan_for(p)
        if plan.stretched:
            rows.append((f"practice {p.name}: rate budget", "warn", plan.message()))
        else:
            rows.append((f"practice {p.name}: rate budget", "ok",
                         f"steady polls need {round(plan.need_per_hour):,} requests/h; "
                         f"the share is {p.max_requests_per_hour:,}"))
        try:
            key = p.api_key_value()
        except ConfigError as exc:
            rows.append((f"practice {p.name}: key", "FAIL", str(exc)))
            continue
        client = DentallyClient(p.url, key, timeout=p.timeout)
        try:
            user = await client.user()
            rows.append((f"practice {p.name}: key", "ok",
                         f"{p.url}, user {user.get('id', '?')}"))
            for name in p.resources:
                what = f"practice {p.name}: {name}"
                try:
                    page = await client.page(resources.get(name), page=1, per_page=1)
                    total = ("? records" if page.total_count is None
                             else plural(page.total_count, "record"))
                    rows.append((what, "ok", f"readable, {total}"))
                except ScopeError as exc:
                    rows.append((what, "FAIL", f"{p.url}: scope denied: {exc}"))
                except RateLimited as exc:
                    rows.append((what, "warn", f"{p.url}: not checked, Dentally's rate "
                                               f"limit: {exc}"))
                except DentallyError as exc:
                    rows.append((what, "FAIL", f"{p.url}: {exc}"))
            if p.hinted:
                rows.append(await _webhooks_row(p, client))
        except AuthError as exc:
            rows.append((f"practice {p.name}: key", "FAIL",
                         f"{p.url}: invalid, revoked or expired: {exc}"))
        except RateLimited as exc:
            rows.append((f"practice {p.name}: key", "warn",
                         f"{p.url}: not checked, Dentally's rate limit: {exc}"))
        except DentallyError as exc:
            rows.append((f"practice {p.name}: key", "FAIL", f"{p.url}: {exc}"))
        finally:
            await client.aclose()
    return rows


async def _webhooks_row(p: PracticeConfig, client: DentallyClient) -> Row:
    """Dentally's own webhooks for a practice that takes them (GET /v1/webhooks)."""
    what = f"practice {p.name}: Dentally webhooks"
    try:
        hooks = hints.parse_webhooks(await client.get("/webhooks"))
    except ScopeError:
        return (what, "warn", "this key may not list webhooks (403): hints still work, "
                              "but Dentally switching one off is not seen")
    except (DentallyError, ValueError) as exc:
        return (what, "warn", f"not listed: {exc}")
    if not hooks:
        return (what, "warn", "none configured in Dentally: polling alone (a practice "
                              "admin adds one pointing at POST /dentally/" + p.name + ")")
    off = hints.inactive(hooks)
    detail = "; ".join(f"#{w.id} {'INACTIVE' if w.active is False else 'active'}, "
                       f"{w.failed_deliveries if w.failed_deliveries is not None else '?'}"
                       f" failed" for w in hooks)
    return (what, "FAIL" if off else "ok",
            detail + ("; switched off by Dentally: fix the endpoint, then switch it on"
                      if off else ""))


async def _resolve(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in infos})


async def _subscriber_rows(settings: Settings, send_test: bool) -> list[Row]:
    """Per subscriber: its secret, its URL (resolved, and safe unless ``allow_private``),
    its event patterns, and with ``send_test`` a signed ``notifier.test`` POST."""
    rows: list[Row] = []
    known = known_event_types()
    polled = {resources.get(r).singular for p in settings.practices for r in p.resources}
    for sub in settings.subscribers:
        what = f"subscriber {sub.name}"
        parts = urlsplit(sub.url)
        host = parts.hostname or "?"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            secrets = sub.secret_values()
        except ConfigError as exc:
            rows.append((f"{what}: secret", "FAIL", str(exc)))
            secrets = []
        try:
            addresses = await _resolve(host, port)
        except OSError as exc:
            rows.append((f"{what}: url", "FAIL",
                         f"cannot resolve {host}: {exc.strerror or exc}"))
        else:
            unsafe = [(a, r) for a in addresses if (r := safety.unsafe_reason(a))]
            if unsafe and not sub.allow_private:
                address, reason = unsafe[0]
                rows.append((f"{what}: url", "FAIL",
                             f"{host} resolves to {address}, {reason}: every delivery would "
                             "be refused; set allow_private = true for this subscriber"))
            else:
                rows.append((f"{what}: url", "ok",
                             f"{host} resolves to {', '.join(addresses)}"
                             + (" (private, allowed)" if unsafe else "")))
        problems = check_patterns(sub.events, known, polled)
        for problem in problems:
            rows.append((f"{what}: events", problem.severity, problem.message))
        if not problems:
            rows.append((f"{what}: events", "ok", ", ".join(sub.events)))
        if send_test and secrets:
            rows.append(await _send_test(sub, secrets))
    return rows


async def _send_test(sub: SubscriberConfig, secrets: list[str]) -> Row:
    """POST one signed ``notifier.test`` event, as the daemon would send any event."""
    what = f"subscriber {sub.name}: test"
    event = notifier_event("notifier.test", "", {
        "subscriber": sub.name,
        "message": "a test from `dentally-notifier check --send-test`; nothing changed",
    }, datetime.now(UTC), uuid.uuid4().hex)
    sender = Sender(sub.url, secrets, timeout=sub.timeout, max_in_flight=1,
                    allow_private=sub.allow_private)
    try:
        attempt = await sender.send(event.id, event.payload)
    finally:
        await sender.aclose()
    host = urlsplit(sub.url).hostname
    ms = f"{attempt.latency * 1000:.0f} ms"
    if attempt.status is not None and 200 <= attempt.status < 300:
        return (what, "ok", f"{event.type} {event.id} accepted: HTTP {attempt.status} "
                            f"from {host} in {ms}")
    return (what, "FAIL", f"POST {sub.url}: {attempt.error or attempt.status}"
            + (f" after {ms}" if attempt.latency else ""))


async def run(settings: Settings, out: TextIO, send_test: bool = False) -> bool:
    """Print the table; True only if nothing failed (warnings do not fail)."""
    rows: list[Row] = [("config", "ok", f"{plural(len(settings.practices), 'practice')}, "
                                        f"{plural(len(settings.subscribers), 'subscriber')}")]
    rows += [("secret file", "warn", w) for w in config.loose_secret_files(settings)]
    rows += await _redis_rows(settings)
    rows += await _practice_rows(settings)
    rows += await _subscriber_rows(settings, send_test)
    width = max(len(r[0]) for r in rows)
    for what, status, detail in rows:
        print(f"{what:<{width}}  {status:<4}  {detail}", file=out)
    return all(status != "FAIL" for _, status, _ in rows)
