"""The daemon: Redis, one runner per practice, and signals, in one anyio task group."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from notifier import config
from notifier.config import PracticeConfig, Settings, SubscriberConfig
from notifier.core.health import Health
from notifier.core.hints import Hint
from notifier.core.text import plural
from notifier.dentally.client import HostPools
from notifier.errors import ConfigError
from notifier.ops import early_signals
from notifier.ops import logging as logsetup
from notifier.ops.http import bind, serve_app
from notifier.ops.metrics import Metrics
from notifier.ops.metrics import app as metrics_app
from notifier.ops.systemd import SystemdNotifier, watchdog_interval
from notifier.service import retention
from notifier.service.delivery import SubscriberWorker, supervise
from notifier.service.ingest import Ingest
from notifier.service.keygroup import KeyHub
from notifier.service.pacing import pacer_for, plan_for
from notifier.service.practice import PracticeRunner
from notifier.store import connection
from notifier.store.delivery import DeliveryStore, groups, unacked
from notifier.store.keys import Keys
from notifier.store.redis import Store

log = logging.getLogger("notifier.daemon")

TRIM_INTERVAL = 60.0
STATUS_EVERY = 10.0
METRICS_EVERY = 2.0
INGEST_CONNECTIONS = 256


PRACTICE_CONNECTIONS = 32
"""Redis connections the practices share, however many there are: their commands are
short, and a pool that grew with them cost ~6 sockets (and Redis clients) per practice."""
STARTS_PER_SECOND = 20.0
"""Practices taken up per second at start: 1,000 practices start over 50 s (or over their
shortest interval, if shorter), not in one thundering herd."""
KEY_RETRY_POLL = 1.0


def pool_size(settings: Settings) -> int:
    """Connections the daemon may need at once: each subscriber holds one in a blocking read
    and uses more while its deliveries complete; the practices share a bounded number."""
    return 16 + 4 * len(settings.subscribers) + min(
        PRACTICE_CONNECTIONS, 2 * sum(len(p.resources) for p in settings.practices))


def start_delays(practices: list[PracticeConfig]) -> dict[str, float]:
    """When each practice is taken up at start, in seconds: evenly over the shorter of
    ``len / STARTS_PER_SECOND`` and the shortest poll interval, in the configured order."""
    if not practices:
        return {}
    shortest = min(p.interval(r) for p in practices for r in p.resources or ["patients"])
    spread = min(len(practices) / STARTS_PER_SECOND, shortest)
    return {p.name: spread * i / len(practices) for i, p in enumerate(practices)}


async def connect(settings: Settings) -> Redis:
    return await connection.connect(settings.redis.url, pool_size(settings))


async def status_line(store: Store, runners: list[PracticeRunner],
                      workers: list[SubscriberWorker]) -> str:
    """``3 practices, 1 key revoked, 2 subscribers, lag 0``: one line, the truth."""
    revoked = sum(r.revoked for r in runners)
    disabled = sum(w.disabled for w in workers)
    lag = 0
    with contextlib.suppress(RedisError):
        infos = await groups(store.redis, store.stream)
        lag = sum(unacked(infos[w.sub.name]) for w in workers
                  if not w.disabled and w.sub.name in infos)
    parts = [plural(len(runners), "practice")]
    if revoked:
        parts.append(plural(revoked, "key revoked"))
    parts.append(plural(len(workers), "subscriber"))
    if disabled:
        parts.append(f"{disabled} disabled")
    parts.append(f"lag {lag}")
    return ", ".join(parts)


class Daemon:
    """The running daemon: one task per practice and per subscriber, each in its own cancel
    scope so that SIGHUP can add, remove or restart one without touching the others."""

    def __init__(self, settings: Settings, redis: Redis, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.redis = redis
        self.keys = Keys(settings.redis.prefix)
        self.store = Store(redis, self.keys, settings.redis.stream,
                           shape=settings.redis.stream_shape())
        self.notify = SystemdNotifier()
        self.keys_hub = KeyHub(settings.practices, pacer_for, plan_for)
        self.pools = HostPools()
        self.health = Health()
        self.metrics = Metrics()
        self.practices: dict[str, tuple[PracticeConfig, PracticeRunner, anyio.CancelScope]] = {}
        self.subscribers: dict[str, tuple[SubscriberConfig, SubscriberWorker,
                                          anyio.CancelScope]] = {}
        self._stopped: dict[str, anyio.Event] = {}
        """Per subscriber: set once its current worker's task has ended."""
        self._tg: anyio.abc.TaskGroup | None = None
        self.ingest = Ingest(settings.ingest, self._hint_route, self.metrics)
        self.ingest.configure(settings.ingest, settings.practices)

    def _hint_route(self, practice: str) -> Callable[[Hint], None] | None:
        entry = self.practices.get(practice)
        return None if entry is None else entry[1].hint

    @property
    def runners(self) -> list[PracticeRunner]:
        return [r for _, r, _ in self.practices.values()]

    @property
    def workers(self) -> list[SubscriberWorker]:
        return [w for _, w, _ in self.subscribers.values()]

    async def _scoped(self, scope: anyio.CancelScope, fn: Callable[[], Awaitable[None]]
                      ) -> None:
        with scope:
            await fn()

    def _start_practice(self, cfg: PracticeConfig, take_over: str | None = None,
                        delay: float = 0.0) -> None:
        """Start a practice's runner; ``take_over`` is the lease token of the runner it
        replaces on a reload, handed on in one step so that the practice is never free;
        ``delay``: when to take it up (see ``start_delays``)."""
        assert self._tg is not None
        runner = PracticeRunner(self.store, cfg, lease_ttl=self.settings.redis.practice_lease,
                                take_over=take_over, hub=self.keys_hub, health=self.health,
                                metrics=self.metrics, pools=self.pools, start_delay=delay,
                                watch_retry=False)
        scope = anyio.CancelScope()
        self.practices[cfg.name] = (cfg, runner, scope)
        self._tg.start_soon(self._scoped, scope, runner.run)

    def _start_subscriber(self, cfg: SubscriberConfig, after: anyio.Event | None = None
                          ) -> None:
        """Start a subscriber's worker; ``after``: when the worker it replaces (a reload)
        has stopped. Not before: the old worker's last read may have put events in the
        group's pending list after the new one scanned it (a cancelled read whose reply was
        already on its way), and the new one reads only new events after its scan, so those
        would wait, never attempted, until the next restart (the campaign's seed 202)."""
        assert self._tg is not None
        make = partial(SubscriberWorker, self.redis, self.keys, self.store, cfg,
                       health=self.health, metrics=self.metrics,
                       regions=config.regions(self.settings))
        first = make()
        scope = anyio.CancelScope()
        done = anyio.Event()
        self.subscribers[cfg.name] = (cfg, first, scope)
        self._stopped[cfg.name] = done
        self._tg.start_soon(self._run_subscriber, scope, after, done,
                            partial(supervise, _reuse_first(first, make), cfg.name))

    async def _run_subscriber(self, scope: anyio.CancelScope, after: anyio.Event | None,
                              done: anyio.Event, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            with scope:
                if after is not None:
                    await after.wait()
                await fn()
        finally:
            done.set()

    async def run(self, handle_signals: bool, store_warnings: bool = True) -> None:
        if store_warnings:
            await connection.warn_about_store(self.redis)
        for warning in config.loose_secret_files(self.settings):
            log.warning("%s", warning)
        log.info("started: %s, %s, stream %s", plural(len(self.settings.practices), "practice"),
                 plural(len(self.settings.subscribers), "subscriber"),
                 self.settings.redis.stream)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if handle_signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope)
                delays = start_delays(self.settings.practices)
                for practice in self.settings.practices:
                    self._start_practice(practice, delay=delays[practice.name])
                for sub in self.settings.subscribers:
                    self._start_subscriber(sub)
                tg.start_soon(self._trim_forever)
                tg.start_soon(self._watch_key_retries)
                tg.start_soon(self._refresh_metrics)
                if self.settings.metrics.listen:
                    tg.start_soon(self._serve_metrics, self.settings.metrics.listen)
                if self.settings.ingest.listen:
                    tg.start_soon(self._serve_ingest, self.settings.ingest.listen)
                self.notify.ready(await status_line(self.store, self.runners, self.workers))
                tg.start_soon(self._watchdog, watchdog_interval())
        finally:
            self.notify.stopping()
            with anyio.CancelScope(shield=True):
                await self.pools.aclose()

    async def _watch_key_retries(self) -> None:
        """An operator's ``key retry NAME``, for every practice in one round trip a second
        (one command per practice per second was most of an idle daemon's CPU)."""
        while True:
            await anyio.sleep(KEY_RETRY_POLL)
            names = list(self.practices)
            keys = [self.keys.key_retry(n) for n in names]
            try:
                if not keys or not await self.redis.exists(*keys):
                    continue
                pipe = self.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.getdel(key)
                asked = await pipe.execute()
            except RedisError:
                continue
            for name, flag in zip(names, asked, strict=True):
                entry = self.practices.get(name)
                if flag and entry is not None:
                    entry[1].retry_asked()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        signals_ = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        try:
            with anyio.open_signal_receiver(*signals_) as signals:
                # Signals that came during start-up (notifier.ops.early_signals) first.
                for signum in early_signals.take():
                    if not await self._on_signal(signum, scope):
                        return
                async for signum in signals:
                    if not await self._on_signal(signum, scope):
                        return
        finally:
            early_signals.install()   # a signal during the rest of the shutdown is moot

    async def _on_signal(self, signum: int, scope: anyio.CancelScope) -> bool:
        """Act on one signal; False once it stops the daemon."""
        if signum == signal.SIGHUP:
            self.notify.reloading()
            try:
                await self.reload()
            except (Exception, SystemExit) as exc:  # a reload never ends the daemon
                log.error("reload failed, the running configuration stays: %s: %s",
                          type(exc).__name__, exc,
                          exc_info=not isinstance(exc, ConfigError | SystemExit))
            self.notify.ready(await status_line(self.store, self.runners, self.workers))
            return True
        log.info("received %s; stopping", signal.Signals(signum).name)
        self.notify.stopping()
        scope.cancel()
        return False

    async def reload(self) -> None:
        """SIGHUP: re-read the config and keys; apply what changed, keep what did not.
        A config that does not load is refused and the running one stays."""
        new = self.settings
        if self.config_path is not None:
            try:
                new = config.load(self.config_path)
            except ConfigError as exc:
                log.error("reload refused, the running configuration stays: %s", exc)
                return
        pending = config.restart_needed(self.settings, new)
        if pending:
            log.warning("reload: %s changed; %s effect only at the next restart "
                        "(systemctl restart dentally-notifier), the running values stay",
                        ", ".join(pending), "takes" if len(pending) == 1 else "take")
            new = config.keep_restart_only(self.settings, new)
        if new.log != self.settings.log:
            logsetup.setup(new.log.format, new.log.level)
            log.info("reload: [log] applied (format %s, level %s)", new.log.format,
                     new.log.level)
        old_p = {p.name: p for p in self.settings.practices}
        new_p = {p.name: p for p in new.practices}
        self.keys_hub.update(new.practices)
        handed: dict[str, str | None] = {}
        for name, (cfg, runner, scope) in list(self.practices.items()):
            if name not in new_p or new_p[name] != cfg:
                handed[name] = runner.lease_token()
                scope.cancel()
                del self.practices[name]
            else:
                runner.reload()
        for name, cfg in new_p.items():
            if name not in self.practices:
                self._start_practice(cfg, take_over=handed.get(name))
        old_s = {s.name: s for s in self.settings.subscribers}
        new_s = {s.name: s for s in new.subscribers}
        for name, (sub, _, scope) in list(self.subscribers.items()):
            if name not in new_s or new_s[name] != sub:
                scope.cancel()
                del self.subscribers[name]
        for name, sub in new_s.items():
            if name not in self.subscribers:
                self._start_subscriber(sub, after=self._stopped.get(name))
        self.settings = new
        self.ingest.configure(new.ingest, new.practices)
        log.info("reloaded: practices %s, subscribers %s",
                 _changes(old_p, new_p), _changes(old_s, new_s))

    async def _serve_metrics(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        sock = bind(host.strip("[]") or "127.0.0.1", int(port))
        log.info("metrics on http://%s/metrics and /healthz", listen)
        await serve_app(metrics_app(self.metrics, self.health), sock)

    async def _serve_ingest(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        sock = bind(host.strip("[]") or "127.0.0.1", int(port))
        hinted = [p.name for p in self.settings.practices if p.hinted]
        log.info("Dentally webhooks on http://%s/dentally/<practice> (%s)", listen,
                 ", ".join(hinted) or "no practice has a webhook_secret yet")
        # Proxy headers are ours to judge (core.hints.client_address), not uvicorn's; a
        # flood of connections gets 503s past INGEST_CONNECTIONS, never the daemon's memory.
        await serve_app(self.ingest.app(), sock, proxy_headers=False,
                        limit_concurrency=INGEST_CONNECTIONS, timeout_keep_alive=5)

    async def _refresh_metrics(self) -> None:
        """Gauges that live in Redis and in the runners, every few seconds."""
        m = self.metrics
        while True:
            try:
                for runner in self.runners:
                    name = runner.cfg.name
                    m.key_ok.labels(name).set(0 if runner.revoked else 1)
                    m.api_requests.labels(name).set(runner.budget.used(time.time()))
                    if runner.budget.server_remaining is not None:
                        m.budget_left.labels(name).set(runner.budget.server_remaining)
                m.stream_length.set(await self.redis.xlen(self.store.stream))
                infos = await groups(self.redis, self.store.stream)
                for sub in self.settings.subscribers:
                    db = DeliveryStore(self.redis, self.keys, self.store.stream, sub.name)
                    m.retries_pending.labels(sub.name).set(await db.retries_pending())
                    m.dead_letters.labels(sub.name).set(await db.dead_letters())
                    if sub.name in infos:
                        m.lag.labels(sub.name).set(unacked(infos[sub.name]))
            except RedisError as exc:
                log.warning("could not refresh metrics: %s", exc)
            await anyio.sleep(METRICS_EVERY)

    async def _trim_forever(self) -> None:
        """Trim the stream by ``retention`` every minute, held back by enabled subscribers
        and by the consumer groups ``[redis] consumer_groups`` declares."""
        while True:
            try:
                protected = await protected_groups(self.redis, self.keys, self.settings)
                await retention.trim(self.redis, self.store.stream, protected,
                                     self.settings.redis.retention, time.time())
            except RedisError as exc:
                log.warning("could not trim the stream: %s", exc)
            await anyio.sleep(TRIM_INTERVAL)

    async def _watchdog(self, interval: float | None) -> None:
        """Feed systemd's watchdog only while every loop keeps its promise; STATUS too."""
        await watch(self.notify, self.health, lambda: status_line(
            self.store, self.runners, self.workers), interval)


async def protected_groups(redis: Redis, keys: Keys, settings: Settings) -> set[str]:
    """The consumer groups retention must not trim past: every enabled subscriber's, and
    the ones ``[redis] consumer_groups`` declares (the integrator's own readers)."""
    out = set(settings.redis.consumer_groups)
    for sub in settings.subscribers:
        if not await DeliveryStore(redis, keys, settings.redis.stream, sub.name).is_disabled():
            out.add(sub.name)
    return out


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    parts = [f"+{n}" for n in added] + [f"-{n}" for n in removed] + [f"~{n}" for n in changed]
    return " ".join(parts) or "unchanged"


async def watch(notify: SystemdNotifier, health: Health,
                line: Callable[[], Awaitable[str]], interval: float | None) -> None:
    last_status = 0.0
    while True:
        now = time.time()
        stalled = health.stalled(now)
        if stalled:
            log.error("no progress from %s; not feeding the watchdog", ", ".join(stalled))
        elif interval is not None:
            notify.watchdog()
        if now - last_status >= STATUS_EVERY:
            notify.status(await line())
            last_status = now
        await anyio.sleep(interval or STATUS_EVERY)


async def run(settings: Settings, handle_signals: bool = True,
              config_path: Path | None = None, store_warnings: bool = True) -> None:
    """Poll every practice and deliver to every subscriber until cancelled (or SIGTERM).
    ``store_warnings=False`` skips the persistence warnings (the demo's throwaway server)."""
    redis = await connect(settings)
    try:
        await Daemon(settings, redis, config_path).run(handle_signals, store_warnings)
    finally:
        with anyio.CancelScope(shield=True):
            await redis.aclose()
        log.info("stopped")


def _reuse_first(first: SubscriberWorker,
                 make: Callable[[], SubscriberWorker]) -> Callable[[], SubscriberWorker]:
    """The worker the status line watches first; fresh ones after a restart."""
    made = [first]

    def factory() -> SubscriberWorker:
        return made.pop() if made else make()
    return factory
