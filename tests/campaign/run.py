"""A fault campaign: the real daemon against the sandbox, Redis behind a proxy and
misbehaving subscribers, with many faults at once, then a record-by-record check.

    python -m tests.campaign.run --seed 7 --minutes 30     (what ``make soak`` runs)

One seed drives the workload and the fault schedule; a failing run prints the seed that
replays it (timing still varies: the daemon is a real process). Exit status 1 on any
violation.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from redis.asyncio import Redis

from notifier.core.diff import field_changes
from notifier.sandbox.control import SandboxControl
from notifier.sandbox.server import SandboxThread
from notifier.sandbox.state import Sandbox
from notifier.store.codec import Codec
from notifier.store.keys import Keys
from tests.campaign import checker
from tests.campaign.faults import Fault, all_faults
from tests.campaign.receiver import CampaignReceiver, Mode
from tests.integration.daemon import Daemon, write_config
from tests.proxy import DropReplyProxy

SECRET = "whsec_" + "Y2FtcGFpZ24tc2VjcmV0LWtleS0xMjM0NTY3OA=="
RESOURCES = ["patients", "appointments"]
SUBSCRIBERS = [("everything", ["*"]), ("patients", ["patient.*"]),
               ("visits", ["appointment.updated", "appointment.deleted", "notifier.key.*"])]
FAULT_QUIRKS = ("unstable_rate", "error_rate", "latency", "deep_page_limit", "rate_limit",
                "rate_limit_status", "fail_next", "burst_limit", "date_offsets",
                "between_pages", "write_skew_ms")
# Left off by default, on today's main, for defects that other issues are fixing now:
# turn each on as its fix lands (``--enable``). Issue 10: a subscriber that fails and then
# answers 200 gets some events twice with no crash (subscriber.failing), a reply trickled past
# `timeout` counts as delivered (subscriber.trickling): turn each on as its fix lands.
# On since issue 11's fixes: redis.down (acks an outage kept from Redis were dropped and the
# events sent again; seed 4) and daemon.sighup (a reloaded subscriber's events left pending,
# never attempted; seed 202).
KNOWN_OPEN = {"subscriber.failing", "subscriber.trickling"}
KNOWN_OPEN_CHECKS: set[str] = set()
READY_WITHIN = 30.0   # seconds from the daemon's start to READY=1, at most


@dataclass
class Options:
    seed: int
    seconds: float = 30.0
    disabled: set[str] = field(default_factory=lambda: set(KNOWN_OPEN))
    only: set[str] | None = None
    settle: float = 60.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    daemon_path: str | None = None
    """PYTHONPATH for the daemon (a mutated copy of ``notifier``: the campaign must fail)."""
    rate: float = 0.8
    """Faults started per second, on average."""
    baseline_unstable: float = 0.03
    """Dentally's pages skip and repeat rows even on a quiet day: this much of it, always."""
    skip_checks: set[str] = field(default_factory=lambda: set(KNOWN_OPEN_CHECKS))
    poll_interval: float = 1.0
    records: int = 120
    quiet: bool = False
    reconcile: float = 15.0
    """Seconds between sweeps while faults run (4 in the quiet phase). A sweep repairs what
    a broken rule let through before the checker can see it as a lost version: a mutant
    run sweeps rarely."""
    daemon_gap: float = 0.0
    """Seconds at least between the end of one daemon fault (kill, SIGTERM, reload) and
    the start of the next. A soak models a daemon restarted now and then (a deploy, a crash:
    one every half minute or more is already far more than production sees), not a daemon
    that never runs long enough to finish a sweep."""
    max_rows: int = 0
    """Live rows per resource beyond which the workload deletes as often as it creates
    (0: no bound). A long run's tables must not grow without end: a sweep's length, and so
    the quiet phase the check needs, grows with them."""


@dataclass
class Result:
    seed: int
    violations: list[checker.Violation]
    table: str
    evidence: checker.Evidence


class CampaignDaemon(Daemon):
    """The daemon, run from ``path`` when given (a mutant): ``python -m`` puts the working
    directory first on ``sys.path``, so that is where it must start."""

    def __init__(self, config: Path, log: Path, path: str | None) -> None:
        super().__init__(config, log)
        self.path = path
        self.started_at = 0.0
        # systemd's notify socket: a reload is sent only after READY=1, as systemd does.
        self._notify_path = str(log.parent / "notify.sock")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(self._notify_path)
        self._notify.setblocking(False)
        self.ready = False

    def start(self, **env_extra: str) -> None:
        assert self.proc is None or self.proc.poll() is not None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": self._notify_path,
               **env_extra}
        self._drain()
        self.ready = False
        if self.path:
            env["PYTHONPATH"] = self.path
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "run", "--config", str(self.config)],
            stdout=out, stderr=out, env=env, cwd=self.path)
        self.starts += 1
        self.started_at = time.time()

    def _drain(self) -> None:
        while True:
            try:
                message = self._notify.recv(4096)
            except BlockingIOError:
                return
            if b"READY=1" in message.split(b"\n"):
                self.ready = True

    async def hangup(self) -> None:
        """SIGHUP once the daemon said READY=1 (its handler is installed: before that the
        default action ends the process), as systemd sends a reload only then."""
        deadline = time.time() + READY_WITHIN
        while self.alive() and not self.ready and time.time() < deadline:
            await anyio.sleep(0.05)
            self._drain()
        if self.alive() and self.ready:
            self.signal(signal.SIGHUP)

    def close(self) -> None:
        self._notify.close()


class Workload:
    """Creates, updates and deletes records in the sandbox at a steady pace; faults switch
    on rows sharing one ``updated_at`` and bursts of deletes and creates."""

    def __init__(self, control: SandboxControl, rng: random.Random, max_rows: int = 0) -> None:
        self.control, self.rng = control, rng
        self.max_rows = max_rows
        self.live: dict[str, list[str]] = {r: [] for r in RESOURCES}
        self.shared = False
        self.churn = False
        self.running = True
        self._adopted_at = 0.0

    def at_bound(self, resource: str) -> bool:
        """Whether ``resource`` holds ``max_rows`` live rows: every writer that creates rows
        (the steady pace, the shared-stamp and churn faults, writes between pages) stops
        creating there, so a long run's tables stay the size its sweeps are sized for."""
        return bool(self.max_rows) and len(self.live[resource]) >= self.max_rows

    async def adopt(self) -> None:
        """Take the sandbox's own rows as live: rows it created between page reads are
        deleted and edited like the workload's own, and counted against the bound."""
        for resource in RESOURCES:
            self.live[resource] = [str(r["id"]) for r in await self.control.records(resource)]

    async def _now_ms(self) -> int:
        return int((await self.control.clock())["now_ms"])

    async def step(self) -> None:
        rng, c = self.rng, self.control
        resource = rng.choice(RESOURCES)
        ids = self.live[resource]
        if self.shared and ids:
            # Several rows written with one updated_at: creations and edits alike.
            at = await self._now_ms()
            if self.at_bound(resource):
                await c.delete(resource, ids.pop(rng.randrange(len(ids))))
            else:
                made = await c._call("POST", f"/records/{resource}",
                                     {"records": [{} for _ in range(rng.randint(1, 4))],
                                      "at_ms": at})
                ids.extend(made["ids"])
            for rid in rng.sample(ids, min(len(ids), rng.randint(2, 6))):
                await c._call("PATCH", f"/records/{resource}/{rid}", {"at_ms": at})
            return
        if self.churn and len(ids) > 5:
            for _ in range(rng.randint(1, 3)):
                rid = ids.pop(rng.randrange(len(ids)))
                await c.delete(resource, rid)
                if not self.at_bound(resource):
                    ids.append(str((await c.create(resource))["id"]))
            return
        roll = rng.random()
        if self.max_rows and len(ids) >= self.max_rows and 0.04 <= roll < 0.2:
            roll += 0.12   # at the bound: creations become deletions (0.16-0.28)
        if roll < 0.04 and len(ids) > 20:
            # A busy moment (a batch edit): more rows in one poll's window than one page.
            await c.mutate(resource, ids=rng.sample(ids, rng.randint(8, 20)))
        elif roll < 0.2 or len(ids) < 10:
            ids.append(str((await c.create(resource))["id"]))
        elif roll < 0.28:
            await c.delete(resource, ids.pop(rng.randrange(len(ids))))
        else:
            await c.mutate(resource, ids=[rng.choice(ids)])

    async def run(self) -> None:
        while self.running:
            try:
                if self.max_rows and time.monotonic() - self._adopted_at > 5.0:
                    self._adopted_at = time.monotonic()
                    await self.adopt()
                await self.step()
            except httpx.HTTPStatusError as exc:
                # A record the sandbox itself deleted (a write between page reads).
                if exc.response.status_code != 404:
                    raise
                for ids in self.live.values():
                    rid = exc.request.url.path.rstrip("/").rpartition("/")[2]
                    if rid in ids:
                        ids.remove(rid)
            await anyio.sleep(self.rng.uniform(0.03, 0.15))


class Campaign:
    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.dir = workdir
        tag = uuid.uuid4().hex[:8]
        self.prefix = f"campaign-{tag}"
        self.stream = f"campaign-{tag}:events"
        self.token = f"campaign-key-{tag}"
        self.timeout = 1.5
        self.per_page = 10
        self.sub_timeout = 1.0
        self.keepalive = 3.0
        self.rate_window = 2.0
        self.share = 60
        self.poll_interval = opts.poll_interval
        # Sweeps find deletions and rows a poll skipped. Rare while faults run, so that a
        # skipped row shows as a lost change instead of being found a moment later; often
        # once the faults stop, so that every deletion is found before the check.
        self.reconcile = opts.reconcile
        self.resources = RESOURCES
        self.faults: list[checker.FaultRecord] = []
        self.violations: list[checker.Violation] = []
        self.excused: list[tuple[float, float, str]] = []
        self._excuse_open: dict[str, float] = {}
        self.sub_faulted: dict[str, CampaignReceiver] = {}
        self.baseline_quirks: dict[str, Any] = {}
        self.receivers: list[CampaignReceiver] = []
        self.daemon_lock = anyio.Lock()
        self.synced_at: dict[str, float] = {}
        self.started = time.time()
        self._daemon_fault_end = 0.0

    # -- the parts ------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.opts.quiet:
            print(f"[{time.time() - self.started:7.1f}s] {msg}", flush=True)

    def excuse_start(self, why: str) -> None:
        self._excuse_open.setdefault(why, time.time())

    def excuse_end(self, why: str, grace: float = 4.0) -> None:
        start = self._excuse_open.pop(why, None)
        if start is not None:
            self.excused.append((start, time.time() + grace, why))

    def config(self, path: Path, redis_url: str, poll: float | None = None,
               in_flight: int = 8) -> Path:
        self._last_config = (poll, in_flight)
        subs = [{"name": r.name, "url": r.url, "secret": SECRET, "events": pats,
                 "allow_private": True, "timeout": self.sub_timeout,
                 "max_in_flight": in_flight, "start": "beginning",
                 "retry_schedule": [0.2, 0.5, 1, 1, 2] + [2] * 25}
                for r, (_, pats) in zip(self.receivers, SUBSCRIBERS, strict=True)]
        return write_config(
            path, redis_url=redis_url, prefix=self.prefix, stream=self.stream,
            base_url=self.sandbox.url, key=self.token, subscribers=subs,
            resources=RESOURCES, initial_sync="emit", per_page=self.per_page,
            window_rows=100, overlap=0.5, poll_interval=poll or self.poll_interval,
            reconcile_interval=self.reconcile, keepalive_interval=self.keepalive,
            timeout=self.timeout,
            key_probe_interval=1, rate_window=self.rate_window,
            # The workload deletes far faster than a practice does (a fifth of a small table
            # between two sweeps); the fail-closed guard would rightly hold those deletions
            # for a person to confirm.
            max_delete_fraction=0.9,
            max_requests_per_hour=int(self.share * 3600 / self.rate_window))

    async def daemon_start(self) -> None:
        async with self.daemon_lock:
            if not self.daemon.alive():
                self.daemon.start()
                self.excuse_end("daemon down")

    async def daemon_kill9(self) -> None:
        async with self.daemon_lock:
            if self.daemon.alive():
                self.excuse_start("daemon down")
                await anyio.to_thread.run_sync(self.daemon.kill9)

    async def daemon_sigterm(self) -> float:
        async with self.daemon_lock:
            if not self.daemon.alive():
                return 0.0
            self.excuse_start("daemon down")
            t = time.monotonic()
            proc = self.daemon.proc
            assert proc is not None
            proc.send_signal(signal.SIGTERM)
            try:
                await anyio.to_thread.run_sync(lambda: proc.wait(20))
            except subprocess.TimeoutExpired:
                self.violations.append(checker.Violation(
                    "sigterm", "daemon", "still running 20s after SIGTERM", time.time()))
                proc.kill()
                await anyio.to_thread.run_sync(proc.wait)
            return time.monotonic() - t

    async def daemon_sighup(self, rng: random.Random) -> str:
        poll = self.poll_interval * rng.choice([0.7, 1.0, 1.3])
        in_flight = rng.choice([2, 4, 8])
        self.config(self.cfg, self.proxy_url, poll, in_flight)
        async with self.daemon_lock:
            await self.daemon.hangup()
        return f"SIGHUP: poll_interval {poll}, max_in_flight {in_flight}"

    async def redis_lost_reply(self, replay: bool) -> bool:
        """The next script call (a page's commit, mostly) reaches Redis and its reply is
        cut; with ``replay`` it is also sent again, as a retrying client would."""
        self.proxy.replay = replay
        self.proxy.armed = True
        with anyio.move_on_after(2.0):
            while self.proxy.armed:  # noqa: ASYNC110 - the proxy task clears it
                await anyio.sleep(0.005)
        cut = not self.proxy.armed
        self.proxy.armed = False
        return cut

    async def heal_receiver(self, rec: CampaignReceiver) -> None:
        was_gone = rec.mode.gone
        rec.mode = Mode()
        if was_gone:
            await self.cli("subscriber", "enable", rec.name)

    async def cli(self, *args: str) -> str:
        env = {**os.environ}
        if self.opts.daemon_path:
            env["PYTHONPATH"] = self.opts.daemon_path
        done = await anyio.run_process(
            [sys.executable, "-m", "notifier", *args, "--config", str(self.direct_cfg)],
            check=False, env=env, cwd=self.opts.daemon_path)
        if done.returncode != 0:
            raise RuntimeError(f"{args}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
        return done.stdout.decode()

    # -- the schedule ---------------------------------------------------------------------
    def enabled_faults(self, quirks: set[str]) -> list[Fault]:
        out = []
        for f in all_faults():
            if f.kind in self.opts.disabled or not f.available(quirks):
                continue
            if self.opts.only is not None and f.kind not in self.opts.only:
                continue
            out.append(f)
        return out

    async def schedule(self, faults: list[Fault], until: float) -> None:
        active: dict[str, anyio.Event] = {}
        async with anyio.create_task_group() as tg:
            while time.time() < until:
                await anyio.sleep(self.rng.expovariate(self.opts.rate))
                resting = time.time() - self._daemon_fault_end < self.opts.daemon_gap
                free = [f for f in faults if f.group not in active
                        and not (resting and f.group == "daemon")]
                if not free or time.time() >= until:
                    continue
                fault = self.rng.choices(free, [f.weight for f in free])[0]
                duration = self.rng.uniform(*fault.duration)
                active[fault.group] = anyio.Event()
                tg.start_soon(self._one, fault, duration, active, self.rng.random())

    async def _one(self, fault: Fault, duration: float, active: dict[str, anyio.Event],
                   salt: float) -> None:
        rng = random.Random(salt)
        start = time.time()
        detail = ""
        try:
            detail = await fault.start(self, rng)
            self.log(f"{fault.kind}: {detail} for {duration:.1f}s")
            await anyio.sleep(duration)
        except Exception as exc:  # the harness's own trouble: reported, never hidden
            self.violations.append(checker.Violation(
                "harness", fault.kind, f"could not inject: {exc!r}", time.time()))
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await fault.stop(self)
                except Exception as exc:
                    self.violations.append(checker.Violation(
                        "harness", fault.kind, f"could not undo: {exc!r}", time.time()))
                self.faults.append(checker.FaultRecord(fault.kind, start, time.time(),
                                                       detail))
                if fault.group == "daemon":
                    self._daemon_fault_end = time.time()
                active.pop(fault.group, None)

    async def watch_sync(self) -> None:
        """When each resource's first sync ends, as the daemon records it."""
        keys = Keys(self.prefix)
        while len(self.synced_at) < len(RESOURCES):
            for r in RESOURCES:
                if r not in self.synced_at and \
                        await self.redis.hget(keys.cursor("main", r), "synced") == b"1":
                    self.synced_at[r] = time.time()
            await anyio.sleep(0.1)

    async def watch_daemon(self) -> None:
        """A daemon that exits on its own (not by a fault) is a violation; restart it."""
        while True:
            await anyio.sleep(0.5)
            async with self.daemon_lock:
                proc = self.daemon.proc
                if proc is not None and proc.poll() is not None \
                        and "daemon down" not in self._excuse_open:
                    self.violations.append(checker.Violation(
                        "crash", "daemon", f"exited by itself with {proc.returncode}; log "
                        f"tail: {self.daemon.log.read_text()[-600:]}", time.time()))
                    self.excuse_start("daemon down")
            if "daemon down" in self._excuse_open and not self.daemon.alive() \
                    and not self.daemon_lock.locked() \
                    and time.time() - self._excuse_open["daemon down"] > 3:
                await self.daemon_start()

    # -- evidence -------------------------------------------------------------------------
    async def read_stream(self) -> list[dict[str, Any]]:
        out = []
        for entry_id, fields in await self.redis.xrange(self.stream):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            try:
                event = json.loads(f["payload"])
                assert event["id"] == f["id"] and event["type"] == f["type"]
            except (KeyError, ValueError, AssertionError) as exc:
                self.violations.append(checker.Violation(
                    "stream-entry", entry_id.decode(), f"malformed: {exc!r}"))
                continue
            event["_stream_at"] = int(entry_id.split(b"-")[0]) / 1000
            out.append(event)
        return out

    def subscribers(self) -> list[checker.Subscriber]:
        return [checker.Subscriber(r.name, pats, [checker.Receipt(
            d.at, d.webhook_id, d.event_type, d.status, d.success, d.problem, d.done)
            for d in r.snapshot()]) for r, (_, pats) in zip(self.receivers, SUBSCRIBERS,
                                                            strict=True)]

    async def evidence(self, with_status: bool = False) -> checker.Evidence:
        book = await self.control.ledger()
        ev = checker.Evidence(book["writes"], book["requests"], await self.read_stream(),
                              self.subscribers(), list(self.faults), list(self.excused),
                              started=self.started, ended=time.time(),
                              synced_at=dict(self.synced_at))
        if with_status:
            try:
                ev.status = json.loads(await self.cli("status", "--json"))
            except (RuntimeError, ValueError) as exc:
                self.violations.append(checker.Violation("status", "status --json",
                                                         str(exc)))
            groups: Any = await self.redis.xinfo_groups(self.stream)
            ev.redis = {"xlen": await self.redis.xlen(self.stream),
                        "groups": {g["name"].decode(): {"pending": g["pending"],
                                                        "lag": g.get("lag")}
                                   for g in groups}}
        return ev

    async def pending(self) -> list[str]:
        """What the daemon has yet to do (empty: caught up): records whose checks fail,
        events a subscriber has not acknowledged. The same rules as the final check: a
        subscriber never gets the notice of its own disabling, so that one is not waited
        for (waiting for it made every run with a 410 wait the whole settle time)."""
        ev = await self.evidence()
        out = [f"{v.check} {v.subject}: {v.detail}" for v in checker.check_records(ev)]
        types = {str(e["id"]): str(e["type"]) for e in ev.events}
        for sub in ev.subscribers:
            own = {str(e["id"]) for e in ev.events
                   if e["type"] == "notifier.subscriber.disabled"
                   and (e.get("data") or {}).get("subscriber") == sub.name}
            ok = {r.webhook_id for r in sub.receipts if r.success}
            missing = [eid for eid, t in types.items()
                       if any(fnmatch.fnmatchcase(t, p) for p in sub.patterns)
                       and eid not in ok and eid not in own]
            if missing:
                out.append(f"{sub.name}: {len(missing)} events not acknowledged "
                           f"(first {missing[0]})")
        return out

    async def explain(self, ev: checker.Evidence, subject: str) -> None:
        """A lost record's story: its writes, its events and the snapshot we hold."""
        resource, _, rid = subject.partition("/")
        t0 = self.started
        for w in ev.writes:
            if (w["resource"], w["record_id"]) == (resource, rid):
                self.log(f"  {subject} write +{w['at'] - t0:.3f}s updated_ms "
                         f"{w['updated_ms']} {'deleted' if w['deleted'] else w['hash'][:8]}")
        last: dict[str, Any] | None = None
        for e in ev.events:
            d = e.get("data") or {}
            if (d.get("resource"), str(d.get("record_id"))) == (resource, rid):
                h = checker.content_hash(d["record"]) if "record" in d else "-"
                self.log(f"  {subject} event +{e['_stream_at'] - t0:.3f}s {e['type']} "
                         f"updated_at {d.get('updated_at')} {h[:8]}")
                last = d.get("record")
        keys = Keys(self.prefix)
        blob = await self.redis.hget(keys.snapshots("main", resource), rid)
        if blob is None:
            self.log(f"  {subject} no snapshot")
            return
        codec = Codec(await self.redis.get(keys.zdict("main", resource)))
        try:
            canon, seen = codec.read(blob)
            record = json.loads(canon)
            self.log(f"  {subject} snapshot updated_at {record.get('updated_at')} "
                     f"{checker.content_hash(record)[:8]} seen_at {seen}; fields that differ "
                     "from the last event's record: "
                     + ", ".join(sorted(field_changes(last or {}, record))))
        except ValueError as exc:
            self.log(f"  {subject} snapshot unreadable: {exc}")

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> Result:
        opts = self.opts
        sb = Sandbox(seed=opts.seed)
        with contextlib.ExitStack() as stack:
            self.sandbox = stack.enter_context(SandboxThread(sb, key=self.token))
            self.receivers = [stack.enter_context(
                CampaignReceiver(name, SECRET, self.sub_timeout))
                for name, _ in SUBSCRIBERS]
            self.control = SandboxControl(self.sandbox.url)
            self.redis = Redis.from_url(opts.redis_url)
            parts = urlsplit(opts.redis_url)
            self.proxy = DropReplyProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
            port = await self.proxy.start()
            self.proxy_url = f"redis://127.0.0.1:{port}{parts.path or '/0'}"
            try:
                return await self._run(sb)
            finally:
                with contextlib.suppress(Exception):
                    self.daemon.stop()
                with contextlib.suppress(Exception):
                    self.daemon.close()
                await self.proxy.stop()
                keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}*",
                                                              count=1000)]
                if keys:
                    await self.redis.delete(*keys)
                await self.redis.aclose()
                await self.control.aclose()

    async def _run(self, sb: Sandbox) -> Result:
        opts = self.opts
        # Dentally's pages skip and repeat rows even on a quiet day: a little of that always.
        self.baseline_quirks = await self.control.quirks(
            rate_window=self.rate_window, rate_limit=10_000, rate_limit_status=403,
            unstable_rate=self.opts.baseline_unstable)
        for resource in RESOURCES:
            await self.control.seed(resource, opts.records // len(RESOURCES),
                                    spread_days=30)
        self.cfg = self.config(self.dir / "config.toml", self.proxy_url)
        self.direct_cfg = self.config(self.dir / "direct.toml", opts.redis_url)
        self.daemon = CampaignDaemon(self.cfg, self.dir / "daemon.log", opts.daemon_path)
        faults = self.enabled_faults(set(self.baseline_quirks))
        self.started = time.time()
        self.log(f"seed {opts.seed}: {len(faults)} kinds of fault for {opts.seconds:.0f}s: "
                 + ", ".join(f.kind for f in faults))
        await self.daemon_start()
        workload = Workload(SandboxControl(self.sandbox.url), random.Random(opts.seed + 1),
                            opts.max_rows)
        self.workload = workload
        until = time.time() + opts.seconds
        async with anyio.create_task_group() as tg:
            tg.start_soon(workload.run)
            tg.start_soon(self.watch_daemon)
            tg.start_soon(self.watch_sync)
            await self.schedule(faults, until)
            workload.running = False
            workload.shared = workload.churn = False
            await anyio.sleep(0.3)
            # Quiet: every fault undone, the daemon running; it must now catch up.
            await self.control.quirks(**{k: self.baseline_quirks[k] for k in FAULT_QUIRKS
                                         if k in self.baseline_quirks})
            self.proxy.down = False
            await self.daemon_start()
            self.reconcile = 4.0
            self.config(self.cfg, self.proxy_url, *self._last_config)
            hup = time.time()
            async with self.daemon_lock:
                await self.daemon.hangup()
            self.faults.append(checker.FaultRecord("daemon.sighup", hup, time.time(),
                                                   "reconcile_interval 4 (quiet phase)"))
            self.log("faults over; waiting for the daemon to catch up")
            quiet = time.time()
            deadline = quiet + opts.settle
            left = ["not checked"]
            while time.time() < deadline and (left := await self.pending()):  # noqa: ASYNC110
                await anyio.sleep(0.5)
            caught_up = time.time()
            if left:
                self.log(f"not caught up after {opts.settle:.0f}s: " + "; ".join(left[:5])
                         + (f" (and {len(left) - 5} more)" if len(left) > 5 else ""))
            else:
                self.log(f"caught up in {caught_up - quiet:.1f}s")
            await anyio.sleep(1.5)   # late duplicates would arrive now
            tg.cancel_scope.cancel()
        self.excuse_start("daemon down")
        code = self.daemon.stop()
        if code not in (0, None):
            self.violations.append(checker.Violation(
                "exit", "daemon", f"SIGTERM exit status {code}", time.time()))
        ev = await self.evidence(with_status=True)
        ev.ended = caught_up
        limits = checker.Limits(self.token, self.share, self.rate_window, self.keepalive,
                                version_due=max(4.0, 3 * self.poll_interval))
        violations = self.violations + checker.check(ev, limits, opts.skip_checks)
        for v in violations:
            if v.check in ("lost", "lost-version"):
                await self.explain(ev, v.subject)
        table = checker.table(ev, violations, opts.seed, opts.seconds / 60)
        await self.workload.control.aclose()
        return Result(opts.seed, violations, table, ev)


async def campaign(opts: Options) -> Result:
    with tempfile.TemporaryDirectory(prefix="campaign-") as tmp:
        c = Campaign(opts, Path(tmp))
        try:
            return await c.run()
        finally:
            log = Path(tmp) / "daemon.log"
            if log.exists():
                keep = Path(tempfile.gettempdir()) / f"campaign-{opts.seed}-daemon.log"
                keep.write_bytes(log.read_bytes())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="default: random, printed")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--disable", default="", help="fault kinds to leave off, comma-separated")
    p.add_argument("--enable", default="",
                   help="known-open fault kinds to turn on (or 'all'), comma-separated; "
                        f"off by default: {', '.join(sorted(KNOWN_OPEN))}")
    p.add_argument("--only", default="", help="only these fault kinds, comma-separated")
    p.add_argument("--skip-check", default=",".join(sorted(KNOWN_OPEN_CHECKS)),
                   help="checks to leave out, comma-separated")
    p.add_argument("--baseline-unstable", type=float, default=0.03,
                   help="page instability always on (0.03 is what Dentally shows)")
    p.add_argument("--rate", type=float, default=0.8, help="faults per second")
    p.add_argument("--daemon-path", default=None,
                   help="PYTHONPATH for the daemon (to run a mutated copy)")
    p.add_argument("--daemon-gap", type=float, default=None,
                   help="seconds at least between daemon faults (default: 30 for a run of "
                        "5 minutes or more, else 0)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="live rows per resource the workload stops growing at (default: "
                        "300 for a run of 5 minutes or more, else no bound)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    long = a.minutes >= 5
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(10**6)
    enable = set(KNOWN_OPEN) if a.enable == "all" else {k for k in a.enable.split(",") if k}
    disabled = {k for k in a.disable.split(",") if k} | (KNOWN_OPEN - enable)
    opts = Options(seed, a.minutes * 60, disabled,
                   {k for k in a.only.split(",") if k} or None,
                   redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                   daemon_path=a.daemon_path, rate=a.rate, quiet=a.quiet,
                   records=400 if long else 120,
                   baseline_unstable=a.baseline_unstable,
                   skip_checks={k for k in a.skip_check.split(",") if k},
                   daemon_gap=a.daemon_gap if a.daemon_gap is not None else 30.0 * long,
                   max_rows=a.max_rows if a.max_rows is not None else 300 * long,
                   settle=300.0 if long else 60.0)
    result = anyio.run(campaign, opts)
    print(result.table)
    off = sorted(disabled)
    print(f"  faults left off: {', '.join(off) or 'none'}; checks left out: "
          f"{', '.join(sorted(opts.skip_checks)) or 'none'}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
