"""Runs one practice: holds its lease, drives its key's lifecycle, runs its resource loops.

The decisions live elsewhere: the key's life is the pure state machine ``core.keylife``
(this runner feeds it every response, timer, reload and new key, and carries out the
actions it returns); the lease is ``service.lease`` over ``store.lease``; each resource's
loop, with its error isolation, is ``service.resource_loop``. A practice is isolated from
every other: nothing that goes wrong in here leaves this task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
from redis.exceptions import RedisError

from notifier.config import PracticeConfig
from notifier.core import hints as hint_rules
from notifier.core import keylife as kl
from notifier.core.budget import Budget, Plan
from notifier.core.health import Health
from notifier.core.retry import backoff
from notifier.dentally.client import DentallyClient, HostPools
from notifier.dentally.pacer import Pacer
from notifier.errors import ConfigError, DentallyError, LeaseLost, ScopeError
from notifier.events import notifier_event
from notifier.ops.metrics import Metrics
from notifier.service.identity import holder_id
from notifier.service.keygroup import KeyGroup, KeyHub
from notifier.service.lease import LeaseKeeper
from notifier.service.pacing import budget_for, effective_interval, pacer_for, plan_for
from notifier.service.resource_loop import ResourceLoop, policy_for
from notifier.store.connection import REDIS_RETRY_CAP
from notifier.store.lease import Lease
from notifier.store.redis import Store
from notifier.store.sendlog import SendLog

__all__ = ["PracticeRunner", "budget_for", "policy_for"]

log = logging.getLogger("notifier.practice")

KEY_FILE_POLL = 5.0        # how often the key's source is re-read for a new key
RETRY_POLL = 1.0           # how often Redis is asked for an operator's "key retry"
KEY_STATE_WRITE = 10.0     # how often the key's last use and budget go to Redis
MAX_STAGGER = 10.0         # the last resource's first poll at most this late
WEBHOOKS_EVERY = 3600.0    # how often Dentally's own webhooks are listed (hinted practices)
WEBHOOKS_DENIED = 86400.0  # ... and again this long after a key that may not list them


def _lease_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is (or a task group raised only) LeaseLost."""
    if isinstance(exc, LeaseLost):
        return True
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(LeaseLost)[1]
        return rest is None
    return False


class PracticeRunner:
    def __init__(self, store: Store, cfg: PracticeConfig, *, lease_ttl: float = 15.0,
                 take_over: str | None = None, hub: KeyHub | None = None,
                 wall: Callable[[], float] = time.time, health: Health | None = None,
                 metrics: Metrics | None = None, pools: HostPools | None = None,
                 start_delay: float = 0.0, watch_retry: bool = True) -> None:
        """``pools``: the process's shared HTTP pools (else the practice has its own);
        ``start_delay``: seconds to wait before taking the practice up (the daemon spreads
        the first polls of many practices over the interval); ``watch_retry`` False: the
        daemon asks Redis for every practice's "key retry" at once and calls
        :meth:`retry_asked` (else this runner asks for its own, every second)."""
        self.store = store
        self.pools = pools
        self.start_delay = start_delay
        self.watch_retry = watch_retry
        self._asked = False
        self.cfg = cfg
        self._wall = wall
        self._extra = {"practice": cfg.name}
        self._take_over = take_over
        self.keeper = LeaseKeeper(Lease(store.redis, store.keys.lock(cfg.name),
                                        store.keys.lease_epoch(cfg.name), holder_id(),
                                        lease_ttl), cfg.name)
        self.hub = hub or KeyHub([cfg], pacer_for, plan_for)
        self.group: KeyGroup | None = None
        self._pacer = pacer_for(cfg)
        self.health = health or Health()
        self.metrics = metrics
        self._reload = anyio.Event()
        self._wake = anyio.Event()
        self._todo: list[kl.Action] = []
        self.hint_states = {name: hint_rules.HintState(name, cfg.backstop_interval,
                                                       cfg.hint_silence_after)
                            for name in cfg.resources} if cfg.hinted else {}
        """Each resource's Dentally webhook hints; they outlive a pause of the pollers."""
        self.loops: dict[str, ResourceLoop] = {}

    def hint(self, hint: hint_rules.Hint) -> None:
        """A verified Dentally webhook for this practice (from the ingest endpoint, in
        memory, no IO): its resource polls now, within the key's rate budget."""
        state = self.hint_states.get(hint.resource)
        if state is None:
            return
        state.hinted(self._wall())
        loop = self.loops.get(hint.resource)
        if loop is not None:
            loop.hint(hint)

    @property
    def life(self) -> kl.KeyLife:
        """The lifecycle of this practice's key (shared with the practices that use the
        same key)."""
        if self.group is None:
            return kl.KeyLife(keepalive_interval=self.cfg.keepalive_interval,
                              probe_interval=self.cfg.key_probe_interval,
                              scope_recheck_interval=self.cfg.scope_recheck_interval)
        return self.group.life

    @property
    def budget(self) -> Budget:
        return self.pacer.budget

    @property
    def plan(self) -> Plan:
        """The effective poll intervals of the key's practices (docs/budget.md)."""
        return plan_for(self.cfg) if self.group is None else self.group.plan

    @property
    def pacer(self) -> Pacer:
        """The key's pacer (shared with the practices that use the same key)."""
        return self._pacer if self.group is None else self.group.pacer

    @property
    def revoked(self) -> bool:
        return self.group is not None and self.life.state is kl.State.REVOKED

    def lease_token(self) -> str | None:
        """The lease this runner holds, for the runner that replaces it on a reload."""
        token = self.keeper.token
        return None if token is None else token.value

    def reload(self) -> None:
        """SIGHUP: re-read the key now, and probe a stopped key at once."""
        self._reload.set()

    def retry_asked(self) -> None:
        """An operator's ``key retry`` for this practice (found by the daemon's watcher)."""
        self._asked = True
        self._reload.set()

    # -- the lease ----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this practice while we hold its lease; wait for it when we do not.

        Whatever goes wrong in here (Redis gone, a bug) is logged and retried with backoff:
        it never stops the other practices or the subscribers."""
        attempt = 0
        store = self.store.fenced(self.keeper.fence)
        if self._take_over is None and self.start_delay > 0:
            await self._sleep_or_reload(self.start_delay)
        while True:
            try:
                await self.keeper.acquire(self._take_over)
                self._take_over = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.keeper.keep, tg.cancel_scope)
                    while True:   # again with the new key after a key change
                        await self._serve(store)
                attempt = 0
            except Exception as exc:  # isolation: see the docstring
                if _lease_lost(exc):
                    # A commit was refused: another runner holds the practice now.
                    await self.keeper.report_loss(self.keeper.fence())
                    continue
                # Redis trouble: try again within seconds of Redis answering again.
                delay = backoff(attempt, cap=REDIS_RETRY_CAP if isinstance(exc, RedisError)
                                else 60)
                attempt += 1
                log.error("practice stopped by %s: %s; restarting in %.1fs",
                          type(exc).__name__, exc, delay, extra=self._extra,
                          exc_info=not isinstance(exc, RedisError))
                await anyio.sleep(delay)
            finally:
                await self.keeper.release()

    # -- the key's life -----------------------------------------------------------------
    async def _serve(self, store: Store) -> None:
        """Use the key until it changes (then return, to be called again with the new
        one): join its group, drive its lifecycle, run the pollers while it allows."""
        while True:
            try:
                key = self.cfg.api_key_value()
                break
            except ConfigError as exc:
                log.error("%s", exc, extra=self._extra)
                await self._sleep_or_reload(60)
        fp = kl.fingerprint(key)
        group = self.hub.group(fp, self.cfg)
        if group.pacer.recorder is None:
            await self._restore_budget(group)
        self._todo = []
        client = DentallyClient(self.cfg.url, key, timeout=self.cfg.timeout,
                                pacer=group.pacer, pools=self.pools)
        client.gate = self._gate
        client.observer = self._observe
        pollers: anyio.CancelScope | None = None
        stored = await self._key_state()
        self.group = group
        group.join(self, stored, self._wall())
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_key, tg.cancel_scope)
                tg.start_soon(self._record_use, client)
                if self.cfg.hinted:
                    tg.start_soon(self._watch_webhooks, client)
                while True:
                    todo, self._todo = self._todo, []
                    for action in todo:
                        pollers = await self._do(action, tg, client, store, pollers)
                    if self._todo:
                        continue
                    self._wake = anyio.Event()
                    wait = self.life.next_deadline(self._wall()) - self._wall()
                    with anyio.move_on_after(max(0.0, wait)):
                        await self._wake.wait()
                    group.feed(kl.Tick(), self._wall())
        finally:
            group.leave(self, self._wall())
            self.hub.release(group)
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def _restore_budget(self, group: KeyGroup) -> None:
        """The key's requests of the last window, from before a restart or a key change,
        count against its share; from now on each is recorded (``store.sendlog``)."""
        budget = group.pacer.budget
        sendlog = SendLog(self.store.redis, self.store.keys, group.practices, budget.window)
        now = self._wall()
        times = await sendlog.load(now)
        if group.pacer.recorder is None:   # another member of the group did it meanwhile
            budget.restore(times, now)
            group.pacer.recorder = sendlog.record
            if times:
                log.info("%d requests of the last %gs counted against the share (sent "
                         "before a restart)", budget.used(now), budget.window,
                         extra=self._extra)

    def enqueue(self, actions: list[kl.Action]) -> None:
        """Actions of the key's lifecycle for this practice (called by its group)."""
        self._todo += actions
        self._wake.set()

    def _feed(self, event: kl.Event) -> None:
        if self.group is not None:
            self.group.feed(event, self._wall())

    def _gate(self, probe: bool) -> float | None:
        now = self._wall()
        if not self.life.may_send(now, probe):
            return None
        return self.life.rate_wait(now)

    def _observe(self, outcome: kl.Outcome, probe: bool, resource: str | None,
                 reset_at: float | None, reason: str) -> None:
        self._feed(kl.Answer(outcome, probe, resource, reset_at, reason))

    async def _do(self, action: kl.Action, tg: anyio.abc.TaskGroup, client: DentallyClient,
                  store: Store, pollers: anyio.CancelScope | None
                  ) -> anyio.CancelScope | None:
        """Carry out one action of the key's lifecycle; returns the pollers' scope."""
        if isinstance(action, kl.Probe | kl.KeepAlive):
            tg.start_soon(self._use_key, client, isinstance(action, kl.Probe))
        elif isinstance(action, kl.Pause):
            if pollers is not None:
                pollers.cancel()
                pollers = None
        elif isinstance(action, kl.Resume):
            if pollers is None:
                pollers = anyio.CancelScope()
                tg.start_soon(self._run_pollers, pollers, client, store)
                log.info("key ok; polling %s", ", ".join(self.cfg.resources),
                         extra=self._extra)
                if self.plan.stretched:
                    log.warning("%s", self.plan.message(), extra=self._extra)
        elif isinstance(action, kl.Publish):
            await self._publish(action)
        elif isinstance(action, kl.Persist):
            with contextlib.suppress(RedisError):
                await self._set_key_state(**action.fields)
        return pollers

    async def _use_key(self, client: DentallyClient, probe: bool) -> None:
        """A probe or a keep-alive: GET /v1/user. Its answer reaches the lifecycle through
        the client's observer; failures are the lifecycle's to judge."""
        try:
            await client.user(probe=probe)
        except DentallyError as exc:
            log.warning("%s failed: %s", "key probe" if probe else "keep-alive", exc,
                        extra=self._extra)

    async def _run_pollers(self, scope: anyio.CancelScope, client: DentallyClient,
                           store: Store) -> None:
        with scope:
            # The resources' first polls one request slot apart: polled at the same
            # moment, they would queue in the key's pacer every time, and each poll would
            # go out up to (resources - 1) slots late, by turns.
            step = min(self.pacer.budget.slot_seconds, MAX_STAGGER / len(self.cfg.resources))
            try:
                async with anyio.create_task_group() as tg:
                    for i, name in enumerate(self.cfg.resources):
                        loop = ResourceLoop(store, self.cfg, name, client, self.life,
                                            health=self.health, metrics=self.metrics,
                                            wall=self._wall,
                                            interval=effective_interval(self.plan, self.cfg,
                                                                        name),
                                            hints=self.hint_states.get(name),
                                            first_delay=i * step)
                        self.loops[name] = loop
                        tg.start_soon(loop.run)
            finally:
                self.loops = {}

    async def _publish(self, p: kl.Publish) -> None:
        fp = self.life.fp
        if p.type == "notifier.key.revoked":
            log.error("API key %s rejected (%s): polling stopped; a new key is picked up on "
                      "SIGHUP or when the key file changes, and this one is tried again "
                      "every %.0fs (or now: dentally-notifier key retry %s)", fp,
                      p.data.get("reason"), self.cfg.key_probe_interval, self.cfg.name,
                      extra=self._extra)
        elif p.type == "notifier.key.restored":
            log.info("API key %s accepted; polling resumes from the stored cursors", fp,
                     extra=self._extra)
        elif p.type == "notifier.key.idle":
            log.warning("API key %s was unused for more than 10 days: Dentally expires it "
                        "in %s days unless used", fp, p.data.get("expires_in_days"),
                        extra=self._extra)
        elif p.type == hint_rules.INACTIVE:
            log.error("Dentally switched webhook %s off (%s failed deliveries); hints stop "
                      "until it is switched on again, polling carries on", *p.identity,
                      extra=self._extra)
        elif p.type == "notifier.scope.denied":
            log.error("the key may not read %s: %s", p.data.get("resource"),
                      p.data.get("reason"), extra=self._extra)
        event = notifier_event(p.type, self.cfg.name, dict(p.data),
                               datetime.fromtimestamp(self._wall(), UTC), *p.identity)
        try:
            if await self.store.publish(event):
                log.info("published %s", p.type, extra=self._extra)
        except RedisError as exc:
            log.error("could not publish %s: %s", p.type, exc, extra=self._extra)

    async def _watch_key(self, serve: anyio.CancelScope) -> None:
        """A new key (its source changed, or SIGHUP), a reload, an operator's retry."""
        retry_key = self.store.keys.key_retry(self.cfg.name)
        last_read = anyio.current_time()
        while True:
            # The daemon's watcher wakes this loop for a "key retry": only the key's
            # source is looked at here then, every KEY_FILE_POLL.
            with anyio.move_on_after(RETRY_POLL if self.watch_retry else KEY_FILE_POLL):
                await self._reload.wait()
            reloaded = self._reload.is_set()
            if reloaded:
                self._reload = anyio.Event()
            asked, self._asked = self._asked, False
            if self.watch_retry:
                with contextlib.suppress(RedisError):
                    asked = bool(await self.store.redis.getdel(retry_key))
            if asked:
                log.info("key retry asked by an operator: probing now", extra=self._extra)
            if not (reloaded or asked or anyio.current_time() - last_read >= KEY_FILE_POLL):
                continue
            last_read = anyio.current_time()
            try:
                key = self.cfg.api_key_value()
            except ConfigError as exc:
                if reloaded:
                    log.error("%s", exc, extra=self._extra)
                continue
            fp = kl.fingerprint(key)
            if self.group is not None and fp != self.group.fp:
                log.info("new API key %s; checking it", fp, extra=self._extra)
                serve.cancel()   # _serve returns and is called again with the new key
                return
            if reloaded or asked:
                self._feed(kl.RetryNow())

    async def _watch_webhooks(self, client: DentallyClient) -> None:
        """``GET /v1/webhooks`` hourly: each webhook's ``active`` flag and failure counts
        into the key state (``status``), and ``notifier.dentally_webhook.inactive`` once
        when Dentally has switched one off. One bulk request an hour; a key that may not
        list webhooks (403) is asked again daily."""
        await anyio.sleep(5.0)     # after the key's first check
        while True:
            delay = WEBHOOKS_EVERY
            fields: dict[str, str] = {"dentally_webhooks_at": str(self._wall())}
            try:
                hooks = hint_rules.parse_webhooks(await client.get("/webhooks", bulk=True))
                fields |= {"dentally_webhooks": json.dumps([w.as_dict() for w in hooks]),
                           "dentally_webhooks_error": ""}
                for hook in hint_rules.inactive(hooks):
                    await self._publish(kl.Publish(
                        hint_rules.INACTIVE, {"webhook": hook.as_dict(), "action": (
                            "Dentally switched this webhook off (50 failed deliveries): "
                            "check that the ingest endpoint is reachable, then switch it "
                            "on again in Dentally; polling carries on meanwhile")},
                        (hook.id, str(hook.failed_deliveries))))
            except ScopeError:
                delay = WEBHOOKS_DENIED
                fields["dentally_webhooks_error"] = "this key may not list webhooks (403)"
            except (DentallyError, ValueError) as exc:
                fields["dentally_webhooks_error"] = str(exc)[:200]
            with contextlib.suppress(RedisError):
                await self._set_key_state(**fields)
            await anyio.sleep(delay)

    async def _record_use(self, client: DentallyClient) -> None:
        """The key's last use and the budget, for ``status``, at most every few seconds."""
        recorded: tuple[Any, ...] | None = None
        while True:
            fields = {"last_success_at": "" if self.life.last_success is None
                      else str(self.life.last_success), **self.pacer.snapshot()}
            if self.life.last_success is not None and tuple(fields.values()) != recorded:
                with contextlib.suppress(RedisError):
                    await self._set_key_state(**fields)
                    recorded = tuple(fields.values())
            await anyio.sleep(KEY_STATE_WRITE if recorded else 1.0)

    async def _sleep_or_reload(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._reload.wait()
        self._reload = anyio.Event()

    async def _key_state(self) -> dict[str, str]:
        raw: Any = await self.store.redis.hgetall(self.store.keys.key_state(self.cfg.name))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def _set_key_state(self, **fields: str) -> None:
        mapping: dict[Any, Any] = fields
        await self.store.redis.hset(self.store.keys.key_state(self.cfg.name), mapping=mapping)
