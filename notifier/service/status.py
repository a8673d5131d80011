"""``dentally-notifier status``: what the daemon is doing, read from Redis alone.

Works whether the daemon runs or not. Shows no secret: nothing secret is in Redis.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from redis.asyncio import Redis

from notifier.config import Settings
from notifier.core.text import plural
from notifier.core.timefmt import format_ms
from notifier.ops.text import safe
from notifier.service.retention import parse_id
from notifier.store.connection import connect
from notifier.store.delivery import DeliveryStore
from notifier.store.delivery import groups as consumer_groups
from notifier.store.keys import Keys
from notifier.store.redis import Store


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.1f}h ago"
    return f"{s / 86400:.1f}d ago"


def _secs(seconds: float) -> str:
    if seconds >= 10 or seconds == int(seconds):
        return f"{round(seconds):,} s"
    return f"{seconds:.2f}".rstrip("0").rstrip(".") + " s"


def _ago_until(ts: float, now: float) -> str:
    s = max(0.0, ts - now)
    return f"in {s:.0f}s" if s < 120 else f"in {s / 60:.0f}m"


def _backfill(f: dict[str, str], now: float, share: int, per_page: int
              ) -> dict[str, Any] | None:
    """A first sync's progress and estimated time left: at the rate seen so far, and never
    faster than the rate budget allows."""
    done, total = _int(f.get("backfill_done")), _int(f.get("backfill_total"))
    began = _float(f.get("backfill_started_at"))
    if done is None or began is None:
        return None
    out: dict[str, Any] = {"done": done, "total": total, "eta_seconds": None}
    if total and total > done and now > began and done:
        left = total - done
        by_rate = left / (done / (now - began))
        by_budget = left / per_page / share * 3600
        out["eta_seconds"] = max(by_rate, by_budget)
    return out


def _json(value: str | None) -> Any:
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def collect(settings: Settings, redis: Redis, now: float) -> dict[str, Any]:
    keys = Keys(settings.redis.prefix)
    store = Store(redis, keys, settings.redis.stream)
    stream = settings.redis.stream
    out: dict[str, Any] = {"at": now, "stream": {"name": stream,
                                                 "length": await redis.xlen(stream)},
                           "practices": [], "subscribers": []}
    first: Any = await redis.xrange(stream, count=1)
    if first:
        out["stream"]["oldest_age"] = now - parse_id(first[0][0])[0] / 1000
    for p in settings.practices:
        resources = []
        for name in p.resources:
            raw: Any = await redis.hgetall(keys.cursor(p.name, name))
            f = {k.decode(): v.decode() for k, v in raw.items()}
            progress = await store.progress(p.name, name)
            resources.append({
                "resource": name,
                "cursor": None if progress.cursor is None else format_ms(progress.cursor),
                "synced": progress.synced,
                "windows_pending": len(progress.windows),
                "backfill_from": (format_ms(progress.windows[0].lo)
                                  if progress.windows and progress.windows[0].lo else None),
                "last_poll_at": _float(f.get("last_poll_at")),
                "last_error": f.get("last_error") or None,
                "last_error_at": _float(f.get("last_error_at")),
                "tracked": await redis.hlen(keys.snapshots(p.name, name)),
                # What the daemon polls at: the configured interval, or longer when the
                # share cannot carry it (see docs/budget.md).
                "interval": _float(f.get("interval")),
                "interval_configured": _float(f.get("interval_configured")),
                "backfill": _backfill(f, now, p.max_requests_per_hour, p.per_page)
                if not progress.synced else None,
                "rereads": {"note": f.get("reread_note") or None,
                            "at": _float(f.get("reread_at")),
                            "window_waiting": f.get("window_waiting") == "1"},
                "deletions_held": _json(f.get("reconcile_held")),
                "hints": {"mode": f.get("hint_mode") or None,
                          "last_hint_at": _float(f.get("last_hint_at"))}
                if p.hinted else None,
            })
        rawk: Any = await redis.hgetall(keys.key_state(p.name))
        k = {a.decode(): b.decode() for a, b in rawk.items()}
        last_use = _float(k.get("last_success_at"))
        lease: Any = await redis.get(keys.lock(p.name))
        epoch, _, holder = (lease.decode() if lease else "").partition(":")
        out["practices"].append({
            "name": p.name, "url": p.url, "resources": resources,
            "lease": {"holder": holder or None, "epoch": _int(epoch)},
            "dentally_webhooks": {"at": _float(k.get("dentally_webhooks_at")),
                                  "webhooks": _json(k.get("dentally_webhooks")),
                                  "error": k.get("dentally_webhooks_error") or None}
            if p.hinted else None,
            "key": {"state": k.get("state", "unknown"), "fingerprint": k.get("fingerprint"),
                    "lifecycle": k.get("lifecycle"),
                    "next_probe_at": _float(k.get("next_probe_at")),
                    "since": _float(k.get("since")), "reason": k.get("reason"),
                    "last_success_at": last_use,
                    "idle_seconds": None if last_use is None else now - last_use},
            "budget": {"used": _int(k.get("budget_used")), "share": _int(k.get("budget_share")),
                       "window": _float(k.get("budget_window")),
                       "state": k.get("budget_state"),
                       "next_at": _float(k.get("budget_next_at")),
                       "pace": _float(k.get("budget_rate")),
                       "refused_burst": _int(k.get("budget_refused_burst")),
                       "refused_hourly": _int(k.get("budget_refused_hourly")),
                       "server_limit": _int(k.get("server_limit")),
                       "server_remaining": _int(k.get("server_remaining")),
                       "server_reset": _float(k.get("server_reset"))},
        })
    infos = await consumer_groups(redis, stream)
    for sub in settings.subscribers:
        db = DeliveryStore(redis, keys, stream, sub.name)
        state = await db.state()
        g: Any = infos.get(sub.name)
        oldest_needed = None
        if g is not None and g.get("pending"):
            summary: Any = await redis.xpending(stream, sub.name)
            if summary and summary.get("min"):
                oldest_needed = now - parse_id(summary["min"])[0] / 1000
        recent: Any = await redis.lrange(db.k_log, 0, 49)
        attempts = [json.loads(r) for r in recent]
        last = attempts[:1]
        failed = next((a for a in attempts if a.get("error")), None)
        out["subscribers"].append({
            "name": sub.name,
            "enabled": not state.disabled,
            "disabled_reason": state.disabled_reason,
            "group": g is not None,
            "lag": None if g is None else g.get("lag"),
            "pending": None if g is None else g.get("pending"),
            "oldest_undelivered_age": oldest_needed,
            "retention": settings.redis.retention,
            "retries_pending": await db.retries_pending(),
            "dead_letters": await db.dead_letters(),
            "failing_since": state.failing_since,
            "last_success_at": state.last_success_at,
            "last_attempt": last[0] if last else None,
            "last_error": failed,
            "next_retry_at": await db.next_due(),
            "group_lost_at": state.group_lost_at,
            "group_lost_count": state.group_lost_count,
            "lost": state.lost_count,
            "lost_at": state.lost_at,
        })
    out["consumer_groups"] = [
        {"name": name, "exists": name in infos,
         "lag": infos[name].get("lag") if name in infos else None,
         "pending": infos[name].get("pending") if name in infos else None}
        for name in settings.redis.consumer_groups]
    return out


def _in(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _failing(sub: dict[str, Any], now: float) -> list[str]:
    """Why a subscriber fails and when it is tried next; nothing for a healthy one."""
    err = sub.get("last_error")
    last = sub.get("last_attempt")
    lines = []
    recovered = last is not None and not last.get("error") and not sub["retries_pending"]
    if err and not recovered:
        since = sub.get("failing_since")
        lines.append((f"failing since {_ago(since, now)}; " if since else "")
                     + f"last error {_ago(err.get('at'), now)}: {err['error']}"
                     + f" (event {err.get('event', '?')}, attempt {err.get('attempt', '?')})")
    due = sub.get("next_retry_at")
    if due is not None:
        at = datetime.fromtimestamp(due, UTC).isoformat(timespec="seconds")
        when = "now" if due <= now else f"in {_in(due - now)}"
        lines.append(f"next retry {when} ({at})"
                     + (", once enabled" if not sub["enabled"] else ""))
    return lines


def _dentally_webhooks(dw: dict[str, Any], now: float) -> str:
    """``Dentally webhooks (listed 5m ago): #1 active, 0 failed / 120 delivered``."""
    head = f"Dentally webhooks (listed {_ago(dw['at'], now)})"
    if dw.get("error"):
        return f"{head}: {dw['error']}"
    hooks = dw.get("webhooks")
    if not isinstance(hooks, list):
        return f"{head}: not listed yet"
    if not hooks:
        return f"{head}: none configured in Dentally; polling alone"
    parts = [f"#{w.get('id')} " + ("INACTIVE (switched off by Dentally)"
                                   if w.get("active") is False else "active")
             + f", {w.get('failed_deliveries', '?')} failed / "
               f"{w.get('successful_deliveries', '?')} delivered" for w in hooks]
    return f"{head}: " + "; ".join(parts)


def render(data: dict[str, Any], out: TextIO) -> None:
    now = data["at"]
    s = data["stream"]
    print(f"stream {s['name']}: {plural(s['length'], 'event')}"
          + (f", oldest {_ago(now - s['oldest_age'], now)}" if "oldest_age" in s else ""),
          file=out)
    for p in data["practices"]:
        print(f"\npractice {p['name']} ({p['url']})", file=out)
        k, b = p["key"], p["budget"]
        state = k["state"].upper() if k["state"] == "revoked" else k["state"]
        print(f"  key {k['fingerprint'] or '-'}: {state}, last used "
              f"{_ago(k['last_success_at'], now)}"
              + (f" ({k['reason']})" if k["state"] == "revoked" and k["reason"] else ""),
              file=out)
        if b["share"]:
            left = "?" if b["server_remaining"] is None else b["server_remaining"]
            line = (f"  rate budget: {b['used']} of our {b['share']} used in the last "
                    f"{_secs(b['window'])}; {left} left for the key")
            if b.get("pace") is not None:
                line += f"; pace {b['pace']:g}/s"
            state = b.get("state")
            if state and state not in ("open", "paced") and b.get("next_at"):
                line += f"; {state.replace('_', ' ')} until {_ago_until(b['next_at'], now)}"
            refused = (b.get("refused_burst") or 0) + (b.get("refused_hourly") or 0)
            if refused:
                line += (f"; refused {b['refused_burst']}x by the burst limit, "
                         f"{b['refused_hourly']}x by the hourly cap")
            print(line, file=out)
        dw = p.get("dentally_webhooks")
        if dw is not None:
            print("  " + _dentally_webhooks(dw, now), file=out)
        for r in p["resources"]:
            b = r.get("backfill")
            state = "synced" if r["synced"] else (
                f"first sync {b['done']}/{b['total'] or '?'}"
                + (f", ~{b['eta_seconds'] / 60:.0f} min left" if b["eta_seconds"] else "")
                if b else "not started")
            line = (f"  {r['resource']:<13} cursor {r['cursor'] or '-':<24} {state:<28} "
                    f"{r['tracked']:>8} tracked  polled {_ago(r['last_poll_at'], now)}")
            if r.get("interval") is not None:
                line += f", every {_secs(r['interval'])}"
                configured = r.get("interval_configured")
                if configured is not None and r["interval"] > configured:
                    line += f" (configured {_secs(configured)}: stretched to fit the share)"
            hinted = r.get("hints")
            if hinted and hinted.get("mode"):
                line += (f"; Dentally webhooks {hinted['mode']}, last "
                         f"{_ago(hinted['last_hint_at'], now)}")
            print(line, file=out)
            rr = r["rereads"]
            if rr["window_waiting"]:
                print(f"    a window is still incomplete after re-reads ({rr['note']}); the "
                      "cursor waits for it", file=out)
            elif rr["note"] and rr["at"] is not None and now - rr["at"] < 86400:
                print(f"    re-reads {_ago(rr['at'], now)}: {rr['note']}", file=out)
            held = r["deletions_held"]
            if held:
                print(f"    DELETIONS HELD: the sweep would delete {held.get('would_delete')} "
                      f"of {held.get('tracked')} tracked records (over "
                      f"max_delete_fraction {held.get('max_delete_fraction')}); none "
                      f"published. {held.get('action')}", file=out)
            if r["last_error"]:
                print(f"    last error ({_ago(r['last_error_at'], now)}): {r['last_error']}",
                      file=out)
    for g in data.get("consumer_groups", []):
        print(f"\nconsumer group {g['name']} (yours): " + (
            f"lag {'-' if g['lag'] is None else g['lag']} unread, {g['pending'] or 0} "
            "unacknowledged; retention keeps what it still needs" if g["exists"] else
            "not created yet: retention protects it once it exists"), file=out)
    for sub in data["subscribers"]:
        state = "enabled" if sub["enabled"] else f"DISABLED ({sub['disabled_reason']})"
        print(f"\nsubscriber {sub['name']}: {state}", file=out)
        age = sub["oldest_undelivered_age"]
        lag = "-" if sub["lag"] is None else sub["lag"]
        print(f"  lag {lag} unread, {sub['pending'] or 0} in flight or retrying"
              + (f", oldest undelivered {age / 3600:.1f}h of {sub['retention'] / 3600:.0f}h "
                 "retention" if age is not None else ""), file=out)
        print(f"  retries pending {sub['retries_pending']}, dead letters "
              f"{sub['dead_letters']}, last success {_ago(sub['last_success_at'], now)}",
              file=out)
        if sub.get("lost"):
            print(f"  {sub['lost']} event{'s' * (sub['lost'] != 1)} lost: trimmed from the "
                  f"stream before delivery (last {_ago(sub['lost_at'], now)})", file=out)
        for line in _failing(sub, now):
            print(f"  {line}", file=out)
        if sub["group_lost_count"]:
            when = datetime.fromtimestamp(sub["group_lost_at"], UTC).isoformat(
                timespec="seconds")
            print(f"  consumer group lost {sub['group_lost_count']}x (last {when}): "
                  "events appended before that and not delivered may be lost", file=out)


async def run(settings: Settings, out: TextIO, as_json: bool) -> None:
    redis = await connect(settings.redis.url)
    try:
        data = await collect(settings, redis, time.time())
    finally:
        await redis.aclose()
    if as_json:
        print(json.dumps(data, indent=2, default=str), file=out)
    else:
        render(data, safe(out))   # last errors and names come from outside
