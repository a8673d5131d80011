"""Runs one practice: its lock, its key check, and a poll loop per resource.

A practice is isolated from every other: its failures are caught and logged here, with
backoff, and never leave this task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from redis.exceptions import RedisError

from notifier.config import PracticeConfig
from notifier.core import resources
from notifier.core.budget import Budget
from notifier.core.cursor import Policy
from notifier.core.health import Health
from notifier.core.keylife import fingerprint, idle_days_left, keepalive_wait, probe_wait
from notifier.core.retry import backoff
from notifier.core.text import plural
from notifier.dentally.client import DentallyClient
from notifier.errors import AuthError, ConfigError, DentallyError, RateLimited, ScopeError
from notifier.events import Event, notifier_event
from notifier.ops.metrics import Metrics
from notifier.service.poller import ResourcePoller
from notifier.store.redis import PracticeLock, Store

log = logging.getLogger("notifier.practice")

HOST = socket.gethostname()
KEY_FILE_POLL = 5.0        # while a key is dead, how often its file is re-read
KEY_STATE_WRITE = 10.0     # how often the key's last use and budget go to Redis


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def owner_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """Whether the daemon named ``owner`` may still run (unknowable on another host)."""
    host, _, rest = owner.partition(":")
    if host != HOST:
        return True
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True
    return True


def budget_for(cfg: PracticeConfig) -> Budget:
    """The practice's share of its key's rate window, and what its steady polls need."""
    scale = cfg.rate_window / 3600.0
    steady = sum(cfg.rate_window / cfg.interval(r) for r in cfg.resources)
    steady += cfg.rate_window / cfg.keepalive_interval
    share = max(1, int(cfg.max_requests_per_hour * scale))
    return Budget(share=share, window=cfg.rate_window,
                  steady_per_window=min(steady, share * 0.5), floor=int(36 * scale))


def policy_for(cfg: PracticeConfig) -> Policy:
    return Policy(overlap_ms=int(cfg.overlap * 1000), per_page=cfg.per_page,
                  window_rows=cfg.window_rows)


class PracticeRunner:
    def __init__(self, store: Store, cfg: PracticeConfig, owner: str, *,
                 wall: Callable[[], float] = time.time, health: Health | None = None,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.owner = owner
        self._wall = wall
        self._extra = {"practice": cfg.name}
        self.auth_failure: AuthError | None = None
        self._reload = anyio.Event()
        self.budget = budget_for(cfg)
        self.health = health or Health()
        self.metrics = metrics
        self.revoked = False

    async def run(self) -> None:
        """Poll this practice for as long as we hold its lock; wait for it when we do not.

        Whatever goes wrong in here (Redis gone, a bug) is logged and retried with backoff:
        it never stops the other practices or the subscribers."""
        lock = PracticeLock(self.store.redis, self.store.keys.lock(self.cfg.name), self.owner)
        attempt = 0
        while True:
            try:
                await self._acquire(lock)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_lock, lock, tg.cancel_scope)
                    await self._serve()
                attempt = 0
            except Exception as exc:  # isolation: see the docstring
                delay = backoff(attempt, cap=60)
                attempt += 1
                log.error("practice stopped by %s: %s; restarting in %.1fs",
                          type(exc).__name__, exc, delay, extra=self._extra,
                          exc_info=not isinstance(exc, RedisError | ExceptionGroup))
                await anyio.sleep(delay)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2), \
                        contextlib.suppress(RedisError):
                    await lock.release()

    async def _acquire(self, lock: PracticeLock) -> None:
        attempt = 0
        while True:
            try:
                holder = await lock.acquire(owner_alive)
            except RedisError as exc:
                log.error("redis unavailable: %s", exc, extra=self._extra)
                await anyio.sleep(backoff(attempt, cap=30))
                attempt += 1
                continue
            if holder is None:
                return
            log.error("another daemon (%s) is polling this practice; waiting", holder,
                      extra=self._extra)
            await anyio.sleep(lock.ttl_ms / 1000 / 2)

    async def _keep_lock(self, lock: PracticeLock, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(lock.ttl_ms / 1000 / 3)
            try:
                if not await lock.renew():
                    log.error("lost the practice lock to another daemon; stopping",
                              extra=self._extra)
                    scope.cancel()
                    return
            except RedisError as exc:
                log.warning("could not renew the practice lock: %s", exc, extra=self._extra)

    # -- the key's life ----------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the key now (a revoked practice waits for exactly this)."""
        self._reload.set()

    async def _wait_for_change(self, timeout: float, fp: str) -> None:
        """Sleep ``timeout`` seconds, or less if SIGHUP comes or the key source changes."""
        self._reload = anyio.Event()
        with anyio.move_on_after(timeout):
            while True:
                with anyio.move_on_after(KEY_FILE_POLL):
                    await self._reload.wait()
                    return
                try:
                    if fingerprint(self.cfg.api_key_value()) != fp:
                        return
                except ConfigError:
                    pass

    async def _key_state(self) -> dict[str, str]:
        raw: Any = await self.store.redis.hgetall(self.store.keys.key_state(self.cfg.name))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def _set_key_state(self, **fields: str) -> None:
        mapping: dict[Any, Any] = fields
        await self.store.redis.hset(self.store.keys.key_state(self.cfg.name), mapping=mapping)

    async def _notify(self, type_: str, data: dict[str, Any], *identity: str) -> None:
        event = notifier_event(type_, self.cfg.name, data,
                               datetime.fromtimestamp(self._wall(), UTC), *identity)
        if await self.store.publish(event):
            log.info("published %s", type_, extra=self._extra)

    async def _revoked(self, fp: str, exc: AuthError) -> None:
        now = self._wall()
        state = await self._key_state()
        if state.get("state") == "revoked" and state.get("fingerprint") == fp:
            await self._set_key_state(last_probe_at=str(now))
            return
        self.revoked = True
        await self._set_key_state(state="revoked", since=str(now), fingerprint=fp,
                                  last_probe_at=str(now), reason=str(exc))
        await self._notify("notifier.key.revoked",
                           {"reason": str(exc), "key": fp,
                            "action": "create a new API key in Dentally and give it to "
                                      "the notifier (key file or environment), then "
                                      "reload it with SIGHUP"}, fp)
        log.error("API key %s rejected (%s): polling stopped; a new key is picked up on "
                  "SIGHUP or when the key file changes, and this one is tried again every "
                  "%.0fs", fp, exc, self.cfg.key_probe_interval, extra=self._extra)

    async def _key_ok(self, fp: str, client: DentallyClient) -> None:
        now = self._wall()
        self.revoked = False
        state = await self._key_state()
        if state.get("state") == "revoked":
            await self._notify("notifier.key.restored", {"key": fp}, fp)
            log.info("API key %s accepted; polling resumes from the stored cursors", fp,
                     extra=self._extra)
        days = idle_days_left(_float(state.get("last_success_at")), now)
        if days is not None and state.get("fingerprint") == fp:
            await self._notify("notifier.key.idle",
                               {"key": fp, "expires_in_days": round(days, 1)},
                               fp, state.get("last_success_at", ""))
            log.warning("API key %s was unused for more than 10 days: Dentally expires it in "
                        "%.1f days unless used", fp, days, extra=self._extra)
        await self._set_key_state(state="ok", fingerprint=fp, since=str(now),
                                  last_success_at=str(client.last_success or now))

    async def _serve(self) -> None:
        attempt = 0
        while True:
            try:
                key = self.cfg.api_key_value()
            except ConfigError as exc:
                log.error("%s", exc, extra=self._extra)
                await self._wait_for_change(60, "")
                continue
            fp = fingerprint(key)
            state = await self._key_state()
            if state.get("state") == "revoked" and state.get("fingerprint") == fp:
                wait = probe_wait(_float(state.get("last_probe_at")), self._wall(),
                                  self.cfg.key_probe_interval)
                if wait > 0:
                    await self._wait_for_change(wait, fp)
                    continue
            client = DentallyClient(self.cfg.url, key, timeout=self.cfg.timeout,
                                    budget=self.budget)
            delay = 0.0
            try:
                await client.user(probe=True)
                attempt = 0
                await self._key_ok(fp, client)
                log.info("key ok; polling %s", ", ".join(self.cfg.resources),
                         extra=self._extra)
                self.auth_failure = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keepalive, client, tg.cancel_scope)
                    for name in self.cfg.resources:
                        tg.start_soon(self._poll_loop, client, name, tg.cancel_scope)
                if self.auth_failure is not None:
                    # Confirm once: a 401 on a list can be a glitch; one on /user is not.
                    await client.user(probe=True)
                    log.warning("a 401 was not confirmed by /v1/user; resuming",
                                extra=self._extra)
            except AuthError as exc:
                await self._revoked(fp, exc)
                continue
            except RateLimited as exc:
                delay = self._until(exc.reset_at)
                log.warning("rate limited; waiting %.0fs", delay, extra=self._extra)
            except DentallyError as exc:
                delay = backoff(attempt)
                attempt += 1
                log.warning("key check failed (%s); retrying in %.1fs", exc, delay,
                            extra=self._extra)
            finally:
                with anyio.CancelScope(shield=True):
                    await client.aclose()
            await anyio.sleep(delay)

    async def _keepalive(self, client: DentallyClient, scope: anyio.CancelScope) -> None:
        """Use the key at least every ``keepalive_interval`` whatever the pollers do, and
        record its last use in Redis (at most once a minute)."""
        recorded: float | None = None
        while True:
            now = self._wall()
            if keepalive_wait(client.last_success, now, self.cfg.keepalive_interval) == 0:
                try:
                    await client.user()
                except AuthError as exc:
                    self.auth_failure = exc
                    scope.cancel()
                    return
                except DentallyError as exc:
                    log.warning("keep-alive request failed: %s", exc, extra=self._extra)
            if client.last_success is not None and client.last_success != recorded:
                b = self.budget
                with contextlib.suppress(RedisError):
                    await self._set_key_state(
                        last_success_at=str(client.last_success),
                        budget_used=str(b.used), budget_share=str(b.share),
                        budget_window=str(b.window),
                        server_remaining="" if client.rate.remaining is None
                        else str(client.rate.remaining),
                        server_reset="" if client.rate.reset_at is None
                        else str(client.rate.reset_at))
                    recorded = client.last_success
            wait = keepalive_wait(client.last_success, self._wall(),
                                  self.cfg.keepalive_interval)
            await anyio.sleep(min(max(wait, 1.0), KEY_STATE_WRITE))

    def _until(self, reset_at: float | None) -> float:
        if reset_at is None:
            return 60.0
        return min(3600.0, max(1.0, reset_at - self._wall()))

    async def _poll_loop(self, client: DentallyClient, name: str,
                         scope: anyio.CancelScope) -> None:
        resource = resources.get(name)
        extra: dict[str, Any] = {"practice": self.cfg.name, "resource": name}
        poller = ResourcePoller(self.store, client, self.cfg.name, resource,
                                policy_for(self.cfg), initial_sync=self.cfg.initial_sync)
        interval = self.cfg.interval(name)
        attempt = 0
        next_sweep = await self._first_sweep(name)
        beat = f"{self.cfg.name}/{name}"
        # A page, or a wait for the rate budget (beating every 10 s), must come
        # within this long, or the loop is wedged.
        page_within = 2 * self.cfg.timeout + 10.0
        client.heartbeat = lambda: self.health.beat(beat, self._wall(), page_within)
        poller.heartbeat = client.heartbeat
        if self.metrics is not None:
            poller.on_events = self._count_events
        try:
            while True:
                self.health.beat(beat, self._wall(), page_within)
                started = anyio.current_time()
                outcome = "ok"
                try:
                    published = await poller.poll_once()
                    attempt = 0
                    if published:
                        log.info("published %s", plural(published, "event"), extra=extra)
                    if self._wall() >= next_sweep:
                        await poller.reconcile()
                        next_sweep = self._wall() + self.cfg.reconcile_interval
                    delay = max(0.0, interval - (anyio.current_time() - started))
                except AuthError as exc:
                    self.auth_failure = exc
                    scope.cancel()
                    return
                except RateLimited as exc:
                    outcome = "rate_limited"
                    delay = self._until(exc.reset_at)
                    await self._note_error(name, f"rate limited: {exc}")
                    log.warning("rate limited; waiting %.0fs", delay, extra=extra)
                except ScopeError as exc:
                    outcome = "scope_denied"
                    delay = self.cfg.scope_recheck_interval
                    await self._note_error(name, f"scope denied: {exc}")
                    try:
                        fp = fingerprint(self.cfg.api_key_value())
                    except ConfigError:
                        fp = "unreadable"
                    await self._notify("notifier.scope.denied",
                                       {"resource": name, "key": fp, "reason": str(exc),
                                        "action": "create a key with read access to this "
                                                  "resource, or remove it from resources"},
                                       name, fp)
                    log.error("the key may not read %s (%s); trying again in %.0fs", name, exc,
                              delay, extra=extra)
                except (DentallyError, RedisError) as exc:
                    outcome = "error"
                    delay = backoff(attempt)
                    attempt += 1
                    await self._note_error(name, str(exc))
                    log.warning("poll failed (%s: %s); retrying in %.1fs",
                                type(exc).__name__, exc, delay, extra=extra)
                if self.metrics is not None:
                    self.metrics.polls.labels(self.cfg.name, name, outcome).inc()
                    self.metrics.poll_seconds.labels(self.cfg.name, name).observe(
                        anyio.current_time() - started)
                self.health.beat(beat, self._wall(), delay + page_within)
                await anyio.sleep(delay)
        finally:
            self.health.forget(beat)

    def _count_events(self, events: list[Event]) -> None:
        if self.metrics is not None:
            for e in events:
                self.metrics.events.labels(self.cfg.name, e.type).inc()

    async def _first_sweep(self, resource: str) -> float:
        """When the next reconciliation sweep is due: ``reconcile_interval`` after the last
        one, or after now if there never was one (a first sync needs no sweep)."""
        key = self.store.keys.cursor(self.cfg.name, resource)
        raw: Any = await self.store.redis.hget(key, "last_reconcile_at")
        last = _float(raw.decode() if raw else None)
        if last is None:
            last = self._wall()
            await self.store.note(self.cfg.name, resource, last_reconcile_at=str(last))
        return last + self.cfg.reconcile_interval

    async def _note_error(self, resource: str, message: str) -> None:
        with contextlib.suppress(RedisError):
            await self.store.note(self.cfg.name, resource, last_error=message,
                                  last_error_at=str(self._wall()))
