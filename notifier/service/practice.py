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
from typing import Any

import anyio
from redis.exceptions import RedisError

from notifier.config import PracticeConfig
from notifier.core import resources
from notifier.core.cursor import Policy
from notifier.core.retry import backoff
from notifier.dentally.client import DentallyClient
from notifier.errors import AuthError, ConfigError, DentallyError, RateLimited, ScopeError
from notifier.service.poller import ResourcePoller
from notifier.store.redis import PracticeLock, Store

log = logging.getLogger("notifier.practice")

HOST = socket.gethostname()
KEY_PROBE_INTERVAL = 3600.0


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


def policy_for(cfg: PracticeConfig) -> Policy:
    return Policy(overlap_ms=int(cfg.overlap * 1000), per_page=cfg.per_page,
                  window_rows=cfg.window_rows)


class PracticeRunner:
    def __init__(self, store: Store, cfg: PracticeConfig, owner: str, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cfg = cfg
        self.owner = owner
        self._wall = wall
        self._extra = {"practice": cfg.name}
        self.auth_failure: AuthError | None = None

    async def run(self) -> None:
        """Poll this practice for as long as we hold its lock; wait for it when we do not."""
        lock = PracticeLock(self.store.redis, self.store.keys.lock(self.cfg.name), self.owner)
        while True:
            await self._acquire(lock)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_lock, lock, tg.cancel_scope)
                    await self._serve()
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

    async def _serve(self) -> None:
        attempt = 0
        while True:
            try:
                key = self.cfg.api_key_value()
            except ConfigError as exc:
                log.error("%s", exc, extra=self._extra)
                await anyio.sleep(60)
                continue
            client = DentallyClient(self.cfg.url, key, timeout=self.cfg.timeout)
            try:
                await client.user()
                attempt = 0
                log.info("key ok; polling %s", ", ".join(self.cfg.resources),
                         extra=self._extra)
                self.auth_failure = None
                async with anyio.create_task_group() as tg:
                    for name in self.cfg.resources:
                        tg.start_soon(self._poll_loop, client, name, tg.cancel_scope)
                delay = KEY_PROBE_INTERVAL if self.auth_failure else 0.0
                if self.auth_failure:
                    log.error("API key rejected (%s); polling stopped, next check in %.0fs",
                              self.auth_failure, delay, extra=self._extra)
            except AuthError as exc:
                delay = KEY_PROBE_INTERVAL
                log.error("API key rejected (%s); next check in %.0fs", exc, delay,
                          extra=self._extra)
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
        while True:
            started = anyio.current_time()
            try:
                published = await poller.poll_once()
                attempt = 0
                if published:
                    log.info("published %d events", published, extra=extra)
                delay = max(0.0, interval - (anyio.current_time() - started))
            except AuthError as exc:
                self.auth_failure = exc
                scope.cancel()
                return
            except RateLimited as exc:
                delay = self._until(exc.reset_at)
                await self._note_error(name, f"rate limited: {exc}")
                log.warning("rate limited; waiting %.0fs", delay, extra=extra)
            except ScopeError as exc:
                delay = 86_400.0
                await self._note_error(name, f"scope denied: {exc}")
                log.error("the key may not read %s (%s); checking again in a day", name, exc,
                          extra=extra)
            except (DentallyError, RedisError) as exc:
                delay = backoff(attempt)
                attempt += 1
                await self._note_error(name, str(exc))
                log.warning("poll failed (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, delay, extra=extra)
            await anyio.sleep(delay)

    async def _note_error(self, resource: str, message: str) -> None:
        with contextlib.suppress(RedisError):
            await self.store.note(self.cfg.name, resource, last_error=message,
                                  last_error_at=str(self._wall()))
