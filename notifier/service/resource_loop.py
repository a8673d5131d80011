"""One resource of one practice, polled for ever, and isolated from everything else.

Whatever goes wrong while polling this resource stays here: expected failures (Dentally
errors, Redis errors) are retried with backoff, and so is anything unexpected (a bug, a
record of a shape nobody foresaw): it is logged once with its traceback, written to
``status`` as ``last_error``, and retried with a growing backoff, while the practice's
other resources and its key keep-alive carry on. Only two things leave this loop: a lost
lease (``LeaseLost``: the practice must be taken up again) and cancellation.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from redis.exceptions import RedisError

from notifier.config import PracticeConfig
from notifier.core import hints as hint_rules
from notifier.core import resources
from notifier.core.cursor import Policy
from notifier.core.health import Health
from notifier.core.keylife import KeyLife
from notifier.core.retry import backoff
from notifier.core.text import plural
from notifier.dentally.client import DentallyClient
from notifier.dentally.pacer import HEARTBEAT
from notifier.errors import AuthError, DentallyError, LeaseLost, RateLimited, ScopeError
from notifier.events import Event, notifier_event
from notifier.ops.metrics import Metrics
from notifier.service.poller import ResourcePoller
from notifier.store.connection import REDIS_RETRY_CAP
from notifier.store.redis import Store

log = logging.getLogger("notifier.practice")

BUG_BACKOFF_BASE = 5.0      # an unexpected error is retried after 5 s, 10 s, ... 10 min
BUG_BACKOFF_CAP = 600.0
PAUSED_RECHECK = 1.0        # a refused request (key stopped): look again this soon
SWEEP_FETCH_SECONDS = 2.0   # a sweep's one-by-one fetches per pass; then the loop polls again
MAX_HINTED_IDS = 100        # ids kept for fetching between polls; past it the sweep finds them


def policy_for(cfg: PracticeConfig) -> Policy:
    return Policy(overlap_ms=int(cfg.overlap * 1000), per_page=cfg.per_page,
                  window_rows=cfg.window_rows)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class ResourceLoop:
    def __init__(self, store: Store, cfg: PracticeConfig, name: str, client: DentallyClient,
                 life: KeyLife, *, health: Health, metrics: Metrics | None,
                 wall: Callable[[], float] = time.time,
                 interval: float | None = None,
                 hints: hint_rules.HintState | None = None,
                 first_delay: float = 0.0) -> None:
        self.store, self.cfg, self.name, self.client, self.life = store, cfg, name, client, life
        self.health, self.metrics, self._wall = health, metrics, wall
        self.extra: dict[str, Any] = {"practice": cfg.name, "resource": name}
        self.interval = cfg.interval(name) if interval is None else interval
        """Seconds between polls: the configured interval, or longer when the share cannot
        carry it (see docs/budget.md)."""
        self.first_delay = first_delay
        """Seconds before the first poll (the practice staggers its resources)."""
        self._incident: str | None = None
        """The unexpected error this resource is failing with (logged in full once)."""
        self.hints = hints
        """The resource's Dentally webhook hints (None: the practice takes none)."""
        self._wake = anyio.Event()
        self._hinted_ids: set[str] = set()
        self._noted: tuple[str, float | None] | None = None

    def hint(self, hint: hint_rules.Hint) -> None:
        """A Dentally webhook named this resource: poll now (coalesced to one triggered
        poll a second); an id it names that the poll does not show is fetched."""
        if hint.record_id is not None and len(self._hinted_ids) < MAX_HINTED_IDS:
            self._hinted_ids.add(hint.record_id)
        self._wake.set()

    async def _rest(self, delay: float, started: float, wakeable: bool) -> None:
        """Sleep ``delay``, or less when a hint comes (but a second after the last poll
        began at the earliest). After an error the backoff stands, hints or not."""
        if not wakeable:
            await anyio.sleep(delay)
            return
        with anyio.move_on_after(delay):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()
            await anyio.sleep(hint_rules.trigger_wait(anyio.current_time(), started))
            if self.metrics is not None:
                self.metrics.hint_polls.labels(self.cfg.name, self.name).inc()

    async def _after_poll(self, poller: ResourcePoller, ids: set[str], published: int) -> int:
        """Hinted ids the poll did not show, and whether the webhook went silent."""
        seen = poller.seen or set()
        missing = sorted(ids - seen)
        if missing:
            published += await poller.confirm(missing)
        if self.hints is None:
            return published
        silent = self.hints.polled(self._wall(), published > 0)
        if silent is not None:
            log.warning("changes found, but no Dentally webhook for %s for %.0fs: hints "
                        "are being lost; polling every %.0fs again", self.name,
                        silent.found_at - silent.last_hint_at, self.interval,
                        extra=self.extra)
            event = notifier_event(hint_rules.SILENT, self.cfg.name, silent.data(),
                                   datetime.fromtimestamp(self._wall(), UTC), self.name,
                                   str(int(silent.last_hint_at)))
            await self.store.publish(event)
        noted = (self.hints.mode.value, self.hints.last_hint_at)
        if noted != self._noted:     # for status: one write per poll at most
            await self.store.note(self.cfg.name, self.name, hint_mode=noted[0],
                                  last_hint_at=str(noted[1] or ""))
            self._noted = noted
        return published

    async def run(self) -> None:
        if self.first_delay > 0:
            await anyio.sleep(self.first_delay)
        cfg, name = self.cfg, self.name
        poller = ResourcePoller(self.store, self.client, cfg.name, resources.get(name),
                                policy_for(cfg), initial_sync=cfg.initial_sync,
                                max_delete_fraction=cfg.max_delete_fraction)
        poller.sweep_fetch_seconds = SWEEP_FETCH_SECONDS
        interval = self.interval
        with contextlib.suppress(RedisError):
            await self.store.note(cfg.name, name, interval=str(interval),
                                  interval_configured=str(cfg.interval(name)))
        attempt = 0
        next_sweep: float | None = None
        beat = f"{cfg.name}/{name}"
        # A page, or a wait for the rate budget (beating every 10 s), must come
        # within this long, or the loop is wedged.
        page_within = 2 * cfg.timeout + 10.0
        poller.heartbeat = lambda: self.health.beat(beat, self._wall(), page_within)
        HEARTBEAT.set(poller.heartbeat)   # this task's waits for the rate budget
        if self.metrics is not None:
            poller.on_events = self._count_events
            poller.on_stat = self._count_stat
        try:
            while True:
                self.health.beat(beat, self._wall(), page_within)
                started = anyio.current_time()
                outcome = "ok"
                try:
                    if (wait := self.life.scope_wait(name, self._wall())) > 0:
                        outcome = "scope_denied"
                        delay = min(wait, PAUSED_RECHECK * 10)
                    else:
                        if next_sweep is None:
                            next_sweep = await self._first_sweep()
                        ids, self._hinted_ids = self._hinted_ids, set()
                        poller.seen = set()
                        try:
                            published = await poller.poll_once()
                            published = await self._after_poll(poller, ids, published)
                        except BaseException:
                            self._hinted_ids |= ids     # fetched after the next poll
                            raise
                        attempt = 0
                        self._recovered()
                        if published:
                            log.info("published %s", plural(published, "event"),
                                     extra=self.extra)
                        if self._wall() >= next_sweep or await poller.sweep_requested():
                            await poller.reconcile()
                            next_sweep = self._wall() + cfg.reconcile_interval
                        if self.hints is not None:
                            interval = self.hints.interval(self.interval)
                        delay = max(0.0, interval - (anyio.current_time() - started))
                except LeaseLost:
                    raise
                except AuthError:
                    # The key's lifecycle has it (confirming or revoked): it pauses the
                    # pollers; until it does, ask again soon without any request.
                    outcome = "key_rejected"
                    delay = PAUSED_RECHECK
                except RateLimited as exc:
                    outcome = "rate_limited"
                    delay = self._until(exc.reset_at)
                    await self._note_error(f"rate limited: {exc}")
                    log.warning("rate limited; waiting %.0fs", delay, extra=self.extra)
                except ScopeError as exc:
                    outcome = "scope_denied"
                    delay = min(cfg.scope_recheck_interval, PAUSED_RECHECK * 10)
                    await self._note_error(f"scope denied: {exc}")
                    log.error("the key may not read %s (%s); trying again in %.0fs", name,
                              exc, cfg.scope_recheck_interval, extra=self.extra)
                except (DentallyError, RedisError) as exc:
                    outcome = "error"
                    # after a Redis error, retry within seconds of Redis answering again
                    delay = backoff(attempt, cap=REDIS_RETRY_CAP) \
                        if isinstance(exc, RedisError) else backoff(attempt)
                    attempt += 1
                    await self._note_error(str(exc))
                    log.warning("poll failed (%s: %s); retrying in %.1fs",
                                type(exc).__name__, exc, delay, extra=self.extra)
                except Exception as exc:  # isolation: see the module's docstring
                    outcome = "bug"
                    delay = backoff(attempt, base=BUG_BACKOFF_BASE, cap=BUG_BACKOFF_CAP)
                    attempt += 1
                    await self._unexpected(exc, delay, attempt)
                if self.metrics is not None:
                    self.metrics.polls.labels(cfg.name, name, outcome).inc()
                    self.metrics.poll_seconds.labels(cfg.name, name).observe(
                        anyio.current_time() - started)
                self.health.beat(beat, self._wall(), delay + page_within)
                await self._rest(delay, started, outcome == "ok")
        finally:
            self.health.forget(beat)

    async def _unexpected(self, exc: Exception, delay: float, attempt: int) -> None:
        """Log an unexpected error in full the first time, briefly while it repeats."""
        what = f"{type(exc).__name__}: {exc}"
        await self._note_error(f"unexpected error: {what}")
        if what != self._incident:
            self._incident = what
            log.error("polling %s stopped by an unexpected error; the other resources go "
                      "on; retrying in %.0fs", self.name, delay, exc_info=exc,
                      extra=self.extra)
        else:
            log.warning("still failing (%s), attempt %d; retrying in %.0fs", what, attempt,
                        delay, extra=self.extra)

    def _recovered(self) -> None:
        if self._incident is not None:
            log.info("polling %s recovered from: %s", self.name, self._incident,
                     extra=self.extra)
            self._incident = None

    def _until(self, reset_at: float | None) -> float:
        if reset_at is None:
            return 60.0
        return min(3600.0, max(1.0, reset_at - self._wall()))

    def _count_stat(self, stat: str, n: int) -> None:
        """The poller's counts of re-reads, incomplete windows, unreadable snapshots and
        held sweeps, into their metrics."""
        m = self.metrics
        if m is None:
            return
        counter = {"rereads": m.window_rereads, "incomplete": m.windows_incomplete,
                   "unreadable": m.snapshots_unreadable,
                   "suspicious": m.reconcile_suspicious}.get(stat)
        if counter is not None:
            counter.labels(self.cfg.name, self.name).inc(n)

    def _count_events(self, events: list[Event]) -> None:
        if self.metrics is not None:
            for e in events:
                self.metrics.events.labels(self.cfg.name, e.type).inc()

    async def _first_sweep(self) -> float:
        """When the next reconciliation sweep is due: ``reconcile_interval`` after the last
        one, or after now if there never was one (a first sync needs no sweep)."""
        key = self.store.keys.cursor(self.cfg.name, self.name)
        raw: Any = await self.store.redis.hget(key, "last_reconcile_at")
        last = _float(raw.decode() if raw else None)
        if last is None:
            last = self._wall()
            await self.store.note(self.cfg.name, self.name, last_reconcile_at=str(last))
        return last + self.cfg.reconcile_interval

    async def _note_error(self, message: str) -> None:
        with contextlib.suppress(RedisError):
            await self.store.note(self.cfg.name, self.name, last_error=message,
                                  last_error_at=str(self._wall()))
