"""Scale benchmark: what one daemon process costs per configured practice.

For each practice count (10, 50, 200 by default; ``--sizes 10,50,200,1000``) the real
daemon (``python -m notifier run``) polls that many practices, 5 resources each, every
``--interval`` seconds, against a sandbox process that serves each practice its own small
data set (its own key, under its own path ``/p<i>`` of one host, as practices share
Dentally's one host). Printed, one row per count:

- RSS of the daemon at the end of the run, and RSS per practice added beyond the first
  row (aim: at most 400 MB at 1,000, at most 1 MB per added practice);
- sockets the daemon holds (peak; Redis and HTTP), from ``/proc/<pid>/fd`` (aim: <= 200);
- startup: from the process's start until every practice's every resource has been polled
  once (aim: < 60 s), and how spread the first polls are (the busiest second's share);
- poll adherence: of the gaps between one resource's polls during the measured window
  (``--settle`` intervals after startup, ``--measure`` long), the share within 10% of
  the interval, and the worst (aim: every poll within 10%);
- CPU per request of the daemon against a bare httpx loop making the same requests in
  the same run (aim: ratio <= 1.2);
- Redis memory per practice at rest (``MEMORY USAGE`` of every key of the run's prefix),
  split by what it is made of (snapshots, dictionaries, cursors, the rest).

Redis is ``REDIS_URL`` or an embedded Valkey; every key the run writes is under its own
prefix and deleted at the end. Usage:
    python bench/scale.py [--sizes 10,50,200] [--interval 30] [--rows 20]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier.dentally.client import USER_AGENT
from notifier.ops.embedded import redis_server
from notifier.store.connection import delete_prefix

RESOURCES = ("patients", "appointments", "invoices", "payments", "treatment_plans")
PAGE = re.compile(r"^/p(\d+)(/.*)$")


# -- the sandbox: one process, one small data set per practice ---------------------------
def serve(count: int, rows: int) -> None:
    """Run the multi-practice sandbox (``--serve``): practice i is ``/p<i>``, key
    ``key-<i>``. ``/_bench/log`` hands out (and clears) the API requests served so far:
    ``[time, practice, resource]``."""
    from notifier.ops.http import bind, serve_app
    from notifier.sandbox.app import build_app
    from notifier.sandbox.server import SANDBOX_CONFIG
    from notifier.sandbox.state import Sandbox

    apps: list[Any] = []
    for i in range(count):
        sb = Sandbox(seed=i + 1)
        sb.ledger.requests = type(sb.ledger.requests)(maxlen=1)   # the bench keeps its own
        sb.ledger.writes = type(sb.ledger.writes)(maxlen=1)
        sb.add_key(f"key-{i}", user_id=i + 1)
        for resource in RESOURCES:
            sb.seed(resource, rows, 20)
        apps.append(build_app(sb))
    log: list[tuple[float, int, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/_bench/log":
            body = json.dumps(log).encode()
            log.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        m = PAGE.match(path)
        if not m or int(m.group(1)) >= count:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        i, rest = int(m.group(1)), m.group(2)
        parts = rest.split("/")
        if len(parts) > 2 and parts[1] == "v1":
            log.append((time.time(), i, parts[2]))
        await apps[i]({**scope, "path": rest, "raw_path": rest.encode()}, receive, send)

    sock = bind("127.0.0.1", 0)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    anyio.run(lambda: serve_app(app, sock, **SANDBOX_CONFIG))


@contextlib.contextmanager
def sandbox_process(count: int, rows: int) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(count), "--rows",
                             str(rows)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"sandbox did not start: {line!r}")
        yield line, proc
    finally:
        proc.terminate()
        proc.wait(30)


# -- the daemon --------------------------------------------------------------------------
def write_config(path: Path, *, count: int, url: str, redis_url: str, prefix: str,
                 interval: float) -> None:
    lines = ["[redis]", f'url = "{redis_url}"', f'stream = "{prefix}:events"',
             f'prefix = "{prefix}"', "", "[log]", 'format = "text"', 'level = "warning"']
    for i in range(count):
        lines += ["", "[[practices]]", f'name = "p{i}"', 'region = "sandbox"',
                  f'base_url = "{url}/p{i}"', f'api_key = "key-{i}"',
                  f"resources = {json.dumps(list(RESOURCES))}",
                  f"poll_interval = {interval}"]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Sample:
    at: float
    rss: int          # bytes
    cpu: float        # seconds (user + system)
    redis: int        # sockets connected to Redis
    http: int         # other sockets


def _inodes(pid: int) -> dict[str, int]:
    """Socket inode -> remote port, for the process's TCP sockets."""
    out: dict[str, int] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            for line in list(f)[1:]:
                parts = line.split()
                out[parts[9]] = int(parts[2].rsplit(":", 1)[1], 16)
    return out


def sample(pid: int, redis_port: int) -> Sample:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    ports = _inodes(pid)
    redis = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                if ports.get(target[8:-1]) == redis_port:
                    redis += 1
                else:
                    other += 1
    return Sample(time.monotonic(), rss, cpu, redis, other)


# -- Redis at rest ----------------------------------------------------------------------
KINDS = (("snap", "snapshots"), ("zdict", "dictionaries"), ("cursor", "cursors"))


async def redis_memory(redis: Redis, prefix: str) -> dict[str, int]:
    """Bytes by kind of key under ``prefix`` (MEMORY USAGE, every element sampled)."""
    out: Counter[str] = Counter()
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        text = key.decode()
        kind = next((name for tag, name in KINDS if f":{tag}:" in text), "other")
        out[kind] += await redis.memory_usage(key, samples=0) or 0
    return dict(out)


# -- the bare httpx loop -------------------------------------------------------------------
async def bare_loop(url: str, requests: list[tuple[int, str]]) -> float:
    """CPU seconds per request of a bare httpx client making ``requests`` (practice,
    resource): the same paths the daemon asked for, one connection pool, a few at once."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    todo = list(requests)

    async with httpx.AsyncClient(headers={"User-Agent": USER_AGENT,
                                          "Accept": "application/json"},
                                 timeout=30) as client:
        async def worker() -> None:
            while todo:
                i, resource = todo.pop()
                params = {"page": "1", "per_page": "100"}
                if resource == "payments":
                    params["dated_after"] = since[:10]
                else:
                    params["updated_after"] = since
                r = await client.get(f"{url}/p{i}/v1/{resource}", params=params,
                                     headers={"Authorization": f"Bearer key-{i}"})
                r.raise_for_status()
                r.json()

        started = time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        return (time.process_time() - started) / max(1, len(requests))


# -- one practice count -------------------------------------------------------------------
@dataclass
class Row:
    count: int
    rss: int
    sockets: int
    redis_sockets: int
    http_sockets: int
    startup: float
    first_burst: float
    within: float
    worst: float
    cpu_req: float
    bare_req: float
    redis_bytes: dict[str, int]


async def fetch_log(client: httpx.AsyncClient, url: str) -> list[tuple[float, int, str]]:
    body = (await client.get(f"{url}/_bench/log")).json()
    return [(float(t), int(i), str(r)) for t, i, r in body]


async def run_one(count: int, interval: float, rows: int, redis_url: str,
                  measure: float, settle: float) -> Row:
    prefix = f"bench-scale-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_url)
    redis_port = int(redis.connection_pool.connection_kwargs.get("port", 6379))
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(count, rows) as (url, _):
        cfg = Path(tmp) / "notifier.toml"
        write_config(cfg, count=count, url=url, redis_url=redis_url, prefix=prefix,
                     interval=interval)
        log_path = Path(tmp) / "daemon.log"
        http = httpx.AsyncClient(timeout=30)
        await fetch_log(http, url)   # clear
        with log_path.open("wb") as out:
            started = time.monotonic()
            started_wall = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "notifier", "run",  # noqa: ASYNC220
                                     "--config", str(cfg)], stdout=out, stderr=out,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            samples: list[Sample] = []
            requests: list[tuple[float, int, str]] = []
            seen: dict[tuple[int, str], float] = {}
            want = count * len(RESOURCES)
            startup = None
            deadline = started + max(180.0, 3 * interval)
            while startup is None:
                await anyio.sleep(0.5)
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited: {log_path.read_text()[-2000:]}")
                samples.append(sample(proc.pid, redis_port))
                for t, i, r in await fetch_log(http, url):
                    requests.append((t, i, r))
                    seen.setdefault((i, r), t)
                if len(seen) >= want:
                    startup = max(seen.values()) - started_wall
                elif time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(seen)} of {want} resources polled "
                                       f"after {deadline - started:.0f}s")
            per_second = Counter(int(t) for t in seen.values())
            first_burst = max(per_second.values()) / want
            # The measured window: ``settle`` intervals after every resource was polled
            # once (the first syncs of the last practices are over), ``measure`` long.
            settled = time.monotonic() + settle * interval
            while time.monotonic() < settled:
                await anyio.sleep(0.5)
                samples.append(sample(proc.pid, redis_port))
                requests += await fetch_log(http, url)
            window_start = time.time()
            cpu0 = sample(proc.pid, redis_port).cpu
            n0 = len(requests)
            window_end = time.monotonic() + measure * interval
            while time.monotonic() < window_end:
                await anyio.sleep(0.5)
                samples.append(sample(proc.pid, redis_port))
                requests += await fetch_log(http, url)
            last = sample(proc.pid, redis_port)
            requests += await fetch_log(http, url)
            in_window = requests[n0:]
            cpu_req = (last.cpu - cpu0) / max(1, len(in_window))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Poll adherence: the gaps between one resource's polls (a poll is one request
        # here: every data set fits one page).
        times: dict[tuple[int, str], list[float]] = defaultdict(list)
        for t, i, r in requests:
            times[(i, r)].append(t)
        gaps = [b - a for ts in times.values() for a, b in itertools.pairwise(ts)
                if b - a > interval / 2 and a >= window_start]
        within = sum(abs(g - interval) <= 0.1 * interval for g in gaps) / max(1, len(gaps))
        if os.environ.get("SCALE_DUMP"):
            Path(os.environ["SCALE_DUMP"]).write_text(json.dumps(  # noqa: ASYNC240
                {"started": started_wall, "startup": startup, "requests": requests,
                 "samples": [s.__dict__ for s in samples]}))
        worst = max((abs(g - interval) / interval for g in gaps), default=0.0)
        bare = await bare_loop(url, [(i, r) for _, i, r in in_window][:3000])
        await http.aclose()
    memory = await redis_memory(redis, prefix)
    await delete_prefix(redis, prefix)
    await redis.aclose()
    peak = max(samples, key=lambda s: s.redis + s.http)
    return Row(count, last.rss, peak.redis + peak.http, peak.redis, peak.http, startup,
               first_burst, within, worst, cpu_req, bare, memory)


def table(rows: list[Row], interval: float) -> str:
    base = rows[0]
    head = (f"{'practices':>9} | {'RSS MB':>7} | {'MB/added':>8} | {'sockets (redis+http)':>20} "
            f"| {'startup s':>9} | {'busiest 1s':>10} | {'polls within 10%':>16} "
            f"| {'worst':>6} | {'CPU/req ms':>10} | {'bare ms':>7} | {'ratio':>5} "
            f"| Redis kB/practice at rest")
    out = [f"interval {interval:g}s, {len(RESOURCES)} resources per practice", head,
           "-" * len(head)]
    for r in rows:
        per = "" if r is base else \
            f"{(r.rss - base.rss) / (r.count - base.count) / 2**20:.2f}"
        total = sum(r.redis_bytes.values())
        parts = ", ".join(f"{k} {v / r.count / 1024:.1f}"
                          for k, v in sorted(r.redis_bytes.items(), key=lambda kv: -kv[1]))
        out.append(
            f"{r.count:>9} | {r.rss / 2**20:>7.0f} | {per:>8} | "
            f"{f'{r.sockets} ({r.redis_sockets}+{r.http_sockets})':>20} | "
            f"{r.startup:>9.1f} | {r.first_burst:>9.0%} | {r.within:>16.1%} | "
            f"{r.worst:>5.0%} | {r.cpu_req * 1000:>10.2f} | {r.bare_req * 1000:>7.2f} | "
            f"{r.cpu_req / r.bare_req:>5.2f} | {total / r.count / 1024:.1f} ({parts})")
    return "\n".join(out)


async def main(sizes: list[int], interval: float, rows: int, measure: float,
               settle: float) -> None:
    with redis_server() as redis_url:
        results = []
        for n in sizes:
            row = await run_one(n, interval, rows, redis_url, measure, settle)
            results.append(row)
            print(table(results, interval), flush=True)
            print(flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--rows", type=int, default=20,
                        help="records per resource in each practice's data set")
    parser.add_argument("--measure", type=float, default=2.5,
                        help="intervals measured after steady polling")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="intervals waited after every resource's first poll")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.rows)
    else:
        anyio.run(main, [int(s) for s in args.sizes.split(",")], args.interval, args.rows,
                  args.measure, args.settle)
