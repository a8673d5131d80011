"""Holding a practice's lease: wait for it, renew it, notice truthfully when it is gone.

The lease itself (and why its token fences every commit) is ``store.lease``. This module
is the loop around it: acquire (taking over from a reloaded runner without a gap, or
waiting for another daemon's lease to be released or to expire), renew every third of its
time, and stop the practice's work when it can no longer be sure it holds it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import anyio
from redis.exceptions import RedisError

from notifier.core.retry import backoff
from notifier.service.identity import ours
from notifier.store.lease import Lease, Token, describe

log = logging.getLogger("notifier.practice")


class LeaseKeeper:
    def __init__(self, lease: Lease, practice: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self._extra = {"practice": practice}
        self._mono = monotonic
        self.ttl = lease.ttl_ms / 1000

    @property
    def token(self) -> Token | None:
        return self.lease.token

    def fence(self) -> str:
        """The token each commit carries ('' when none is held: every commit refused)."""
        return self.lease.token.value if self.lease.token is not None else ""

    async def acquire(self, take_over: str | None = None) -> None:
        """Return once the lease is ours. ``take_over`` is the token of the runner this
        one replaces (a reload): taken in one step, no gap.

        A lease held by another process may be a live daemon polling the same practice
        (a mistake worth an error) or one that was killed (its lease expires within
        ``ttl``): only a holder that keeps its lease past twice that is reported as an
        error."""
        attempt = 0
        holder_seen: str | None = None
        since = 0.0
        reported = False
        while True:
            try:
                holder = await self.lease.acquire(take_over)
            except RedisError as exc:
                log.error("redis unavailable: %s", exc, extra=self._extra)
                await anyio.sleep(backoff(attempt, cap=30))
                attempt += 1
                continue
            if holder is None:
                if holder_seen is not None:
                    log.info("practice lease taken (%s)", describe(self.fence()),
                             extra=self._extra)
                return
            take_over = None
            name = holder.partition(":")[2]
            if name != holder_seen:
                holder_seen, since, reported = name, self._mono(), False
                if ours(name):
                    log.info("waiting for this daemon's previous runner of the practice "
                             "to stop", extra=self._extra)
                else:
                    log.warning("the practice's lease is held by %s; waiting (a daemon "
                                "that was killed hands it on within %.0fs)",
                                describe(holder), self.ttl, extra=self._extra)
            elif not reported and self._mono() - since > 2 * self.ttl and not ours(name):
                reported = True
                log.error("another daemon (%s) is polling this practice and keeps its "
                          "lease; this one waits", describe(holder), extra=self._extra)
            await anyio.sleep(min(1.0, self.ttl / 3))

    async def keep(self, scope: anyio.CancelScope) -> None:
        """Renew every third of the lease; cancel ``scope`` once the lease is no longer
        surely ours (lost, or not renewed within its time because Redis is away)."""
        renewed = self._mono()
        while True:
            await anyio.sleep(self.ttl / 3)
            token = self.fence()
            try:
                if await self.lease.renew():
                    renewed = self._mono()
                    continue
            except RedisError as exc:
                if self._mono() - renewed < self.ttl:
                    log.warning("could not renew the practice lease: %s", exc,
                                extra=self._extra)
                    continue
                log.warning("the practice lease was not renewed for %.0fs (redis: %s); "
                            "stopping until it is taken again", self.ttl, exc,
                            extra=self._extra)
                scope.cancel()
                return
            await self.report_loss(token)
            scope.cancel()
            return

    async def report_loss(self, token: str) -> None:
        """Say truthfully why the lease is gone."""
        try:
            now = await self.lease.holder_now()
        except RedisError:
            now = None
        if now is None:
            log.warning("the practice lease (%s) expired before it was renewed (this "
                        "process stalled for more than %.0fs?); taking it up again",
                        describe(token), self.ttl, extra=self._extra)
        elif ours(now.partition(":")[2]):
            log.info("the practice lease passed to this daemon's new runner (%s)",
                     describe(now), extra=self._extra)
        else:
            log.error("lost the practice lease to another daemon (%s); stopping",
                      describe(now), extra=self._extra)

    async def release(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2), \
                contextlib.suppress(RedisError):
            await self.lease.release()
