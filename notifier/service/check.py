"""``dentally-notifier check``: config, Redis, every practice's key and scopes, as a table."""

from __future__ import annotations

from typing import TextIO

from redis.exceptions import RedisError

from notifier.config import Settings
from notifier.core import resources
from notifier.dentally.client import DentallyClient
from notifier.errors import (
    AuthError,
    ConfigError,
    DentallyError,
    RateLimited,
    ScopeError,
    StoreError,
)
from notifier.service.daemon import connect, redact, store_risks
from notifier.service.pacing import plan_for

Row = tuple[str, str, str]


async def _redis_rows(settings: Settings) -> list[Row]:
    where = f"redis {redact(settings.redis.url)}"
    try:
        redis = await connect(settings)
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
                    total = "?" if page.total_count is None else page.total_count
                    rows.append((what, "ok", f"readable, {total} records"))
                except ScopeError as exc:
                    rows.append((what, "FAIL", f"scope denied: {exc}"))
                except RateLimited as exc:
                    rows.append((what, "warn", f"not checked, Dentally's rate limit: {exc}"))
                except DentallyError as exc:
                    rows.append((what, "FAIL", str(exc)))
        except AuthError as exc:
            rows.append((f"practice {p.name}: key", "FAIL",
                         f"invalid, revoked or expired: {exc}"))
        except RateLimited as exc:
            rows.append((f"practice {p.name}: key", "warn",
                         f"not checked, Dentally's rate limit: {exc}"))
        except DentallyError as exc:
            rows.append((f"practice {p.name}: key", "FAIL", str(exc)))
        finally:
            await client.aclose()
    return rows


async def run(settings: Settings, out: TextIO) -> bool:
    """Print the table; True only if nothing failed (warnings do not fail)."""
    rows: list[Row] = [("config", "ok", f"{len(settings.practices)} practices, "
                                        f"{len(settings.subscribers)} subscribers")]
    rows += await _redis_rows(settings)
    rows += await _practice_rows(settings)
    width = max(len(r[0]) for r in rows)
    for what, status, detail in rows:
        print(f"{what:<{width}}  {status:<4}  {detail}", file=out)
    return all(status != "FAIL" for _, status, _ in rows)
