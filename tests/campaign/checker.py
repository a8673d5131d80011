"""The campaign's checker: what happened in Dentally (the sandbox's ledger) against what came
out (the stream, the subscribers' receipts, the key's requests, ``status --json``).

Pure: it takes plain data gathered once the daemon is quiet and returns violations, each
with the record it concerns and the faults active around it.
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from notifier.sandbox.ledger import content_hash
from tests.helpers import is_derived, schema_errors


@dataclass(frozen=True)
class FaultRecord:
    kind: str
    start: float
    end: float
    detail: str = ""


@dataclass(frozen=True)
class Receipt:
    """One webhook request a subscriber received (see receiver.Delivery)."""

    at: float
    webhook_id: str
    event_type: str
    status: int
    success: bool
    problem: str | None = None
    done: float = 0.0
    """When the reply was sent in full."""


@dataclass
class Subscriber:
    name: str
    patterns: list[str]
    receipts: list[Receipt]


@dataclass
class Limits:
    token: str
    share: int
    """Requests the daemon may make per rate window."""
    rate_window: float
    keepalive_interval: float
    budget_slack: int = 4
    """Requests in flight across a window's edge (sent in one, received in the next)."""
    idle_slack: float = 3.0
    duplicate_causes: dict[str, float] = field(default_factory=lambda: {
        "daemon.kill9": 3.0, "daemon.sigterm": 0.1, "daemon.sighup": 0.1})
    """A success delivered again must have been in flight when the daemon stopped: a
    ``kill -9`` up to 3 s after its reply (the ack was not yet in Redis), a SIGTERM or a
    reload that restarts the subscriber before the reply could be read (the attempt was
    cancelled)."""
    version_due: float = 4.0
    """A version current this long outside any fault and its aftermath must be published:
    the daemon polls every second or less, so only a rule that let a row be skipped loses it
    (intermediate versions that lived shorter may rightly be missed)."""
    resources: tuple[str, ...] = ("patients", "appointments")


@dataclass
class Evidence:
    writes: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    events: list[dict[str, Any]]
    """Stream entries' payloads, in stream order."""
    subscribers: list[Subscriber]
    faults: list[FaultRecord]
    excused: list[tuple[float, float, str]] = field(default_factory=list)
    """Intervals in which the key may not be used (daemon down, key revoked)."""
    status: dict[str, Any] | None = None
    redis: dict[str, Any] = field(default_factory=dict)
    """Facts read from Redis directly: ``xlen``, ``groups`` {name: {pending, lag}}."""
    started: float = 0.0
    ended: float = 0.0
    synced_at: dict[str, float] = field(default_factory=dict)
    """When the daemon marked each resource's first sync finished (its cursor's ``synced``)."""


@dataclass
class Violation:
    check: str
    subject: str
    detail: str
    at: float | None = None
    faults: list[FaultRecord] = field(default_factory=list)

    def render(self, t0: float) -> str:
        when = "" if self.at is None else f" at +{self.at - t0:.1f}s"
        lines = [f"[{self.check}] {self.subject}{when}: {self.detail}"]
        for f in self.faults:
            lines.append(f"    fault {f.kind} +{f.start - t0:.1f}s..+{f.end - t0:.1f}s "
                         f"{f.detail}")
        return "\n".join(lines)


def _around(faults: list[FaultRecord], at: float | None, span: float = 5.0
            ) -> list[FaultRecord]:
    if at is None:
        return []
    return [f for f in faults if f.start - span <= at <= f.end + span]


def check(ev: Evidence, limits: Limits, skip: set[str] | frozenset[str] = frozenset()
          ) -> list[Violation]:
    """Every check, less those named in ``skip`` (by their ``Violation.check``)."""
    out: list[Violation] = []
    out += check_records(ev)
    out += check_versions(ev, limits)
    out += check_event_ids(ev)
    out += check_deliveries(ev, limits)
    out += check_budget(ev, limits)
    out += check_keepalive(ev, limits)
    out += check_status(ev)
    out += check_schema(ev)
    out = [v for v in out if v.check not in skip]
    for v in out:
        if not v.faults:
            v.faults = _around(ev.faults, v.at)
    return out


def _kind(event: dict[str, Any]) -> str:
    return str(event["type"]).rpartition(".")[2]


def check_records(ev: Evidence) -> list[Violation]:
    """Per record: every published version is one Dentally had, published once; the last
    state is published and is the last event; a deletion exactly once, and only of a record
    Dentally deleted."""
    out: list[Violation] = []
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for w in ev.writes:
        history[(w["resource"], w["record_id"])].append(w)
    events: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in ev.events:
        if str(e["type"]).startswith("notifier.") or is_derived(e):
            continue   # (derived events carry their cause's version: checked with it)
        d = e["data"]
        events[(d["resource"], str(d["record_id"]))].append(e)

    for key in sorted(set(history) | set(events)):
        subject = f"{key[0]}/{key[1]}"
        writes = history.get(key, [])
        evs = events.get(key, [])
        last_at = writes[-1]["at"] if writes else None
        if not writes:
            out.append(Violation("phantom", subject, f"{len(evs)} events for a record "
                                 "Dentally never had"))
            continue
        versions = {w["hash"]: w for w in writes if not w["deleted"]}
        deleted = writes[-1]["deleted"]
        ever_deleted = any(w["deleted"] for w in writes)
        kinds = [_kind(e) for e in evs]
        counts: Counter[str] = Counter()
        for e in evs:
            if _kind(e) == "deleted":
                continue
            h = content_hash(e["data"]["record"])
            counts[h] += 1
            if h not in versions:
                out.append(Violation("phantom", subject, f"event {e['id']} carries a "
                                     "version Dentally never had", last_at))
        for h, n in counts.items():
            if n > 1 and h in versions:
                out.append(Violation("duplicate", subject, f"version {h[:8]} (updated_at "
                                     f"{versions[h]['updated_ms']}) published {n} times",
                                     versions[h]["at"]))
        if evs and kinds[0] != "created":
            out.append(Violation("order", subject, f"first event is {kinds[0]}, not created",
                                 last_at))
        if kinds.count("created") > 1:
            out.append(Violation("duplicate", subject,
                                 f"created published {kinds.count('created')} times", last_at))
        n_del = kinds.count("deleted")
        if not deleted:
            final = writes[-1]["hash"]
            live = [e for e in evs if _kind(e) != "deleted"]
            if n_del:
                why = "deleted again later" if ever_deleted else "never deleted in Dentally"
                out.append(Violation("deleted-live", subject,
                                     f"deleted {n_del}x but live ({why})", last_at))
            if not live or content_hash(live[-1]["data"]["record"]) != final:
                seen = "never published" if counts.get(final, 0) == 0 else "not the last event"
                out.append(Violation("lost", subject, f"last state {final[:8]} (updated_at "
                                     f"{writes[-1]['updated_ms']}) {seen}", last_at))
        elif evs:
            if n_del != 1:
                out.append(Violation("deletion", subject, f"deleted in Dentally, "
                                     f"{n_del} deleted events", last_at))
            elif kinds[-1] != "deleted":
                out.append(Violation("order", subject, "events after its deletion", last_at))
    return out


def check_schema(ev: Evidence) -> list[Violation]:
    """Every event in the stream is of a published type and matches its JSON Schema; a
    derived event follows the event it names as its cause."""
    out: list[Violation] = []
    seen: set[str] = set()
    for e in ev.events:
        # (the runner's own annotations, such as ``_stream_at``, are not the event's)
        errors = schema_errors({k: v for k, v in e.items() if not k.startswith("_")})
        if errors:
            out.append(Violation("schema", f"{e.get('type')} {e.get('id')}",
                                 "; ".join(errors[:3])))
        if is_derived(e) and e["data"]["cause"] not in seen:
            out.append(Violation("schema", f"{e.get('type')} {e.get('id')}",
                                 f"its cause {e['data']['cause']} is not before it"))
        seen.add(str(e.get("id")))
    return out


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _outside(a: float, b: float, union: list[tuple[float, float]]) -> float:
    """How much of ``[a, b)`` lies outside every span of ``union``."""
    inside = sum(max(0.0, min(b, e) - max(a, s)) for s, e in union if s < b and a < e)
    return (b - a) - inside


# Faults during which Dentally can still be read: unstable pages, rows sharing a stamp,
# writes between page reads, `Date` headers off. A window read dirty is read again, every page
# read publishes what it shows, and no one `Date` moves the clock, so a version that stays
# long enough is seen; these excuse nothing. (A `Date` fault must not excuse "until the next
# listing": a daemon that believed a `Date` an hour ahead lists nothing for an hour.)
READABLE = frozenset({"dentally.unstable", "dentally.shared_updated_at", "dentally.churn",
                      "dentally.writes_between_pages", "dentally.413", "dentally.slow",
                      "dentally.future_stamps", "dentally.date_blip",
                      "dentally.bad_clock_node"} | {f"subscriber.{k}" for k in (
                          "failing", "gone_410", "hanging", "trickling", "slow")})


def ingestion_excused(ev: Evidence, resource: str) -> list[tuple[float, float]]:
    """When the daemon could not be expected to read ``resource`` promptly: the first sync,
    every fault but the subscribers', and after each until its next successful listing
    (a poll in backoff), plus the daemon's down time and the key's revocation."""
    spans = [(s, e) for s, e, _ in ev.excused]
    ok = sorted(float(r["at"]) for r in ev.requests
                if r["path"] == f"/v1/{resource}" and r["status"] == 200)

    def next_ok(t: float) -> float:
        i = bisect.bisect_right(ok, t)
        return ok[i] if i < len(ok) else ev.ended

    for f in ev.faults:
        if f.kind not in READABLE:
            spans.append((f.start, next_ok(f.end) + 2.0))
    synced = ev.synced_at.get(resource, ev.ended)
    spans.append((ev.started - 1e9, synced + 2.0))
    for s, e in list(spans):
        spans.append((s, next_ok(e) + 1.0))
    return _union(spans)


def check_versions(ev: Evidence, limits: Limits) -> list[Violation]:
    """No change lost: a version that Dentally showed long enough was published, even if the
    record changed again since."""
    out: list[Violation] = []
    published: set[tuple[str, str, str]] = set()
    for e in ev.events:
        d = e["data"]
        if "record" in d and not str(e["type"]).endswith(".deleted"):
            published.add((d["resource"], str(d["record_id"]), content_hash(d["record"])))
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for w in ev.writes:
        history[(w["resource"], w["record_id"])].append(w)
    excused = {r: ingestion_excused(ev, r) for r in limits.resources}
    for (resource, rid), writes in sorted(history.items()):
        union = excused.get(resource, [])
        for w, after in itertools.pairwise(writes):
            if w["deleted"] or (resource, rid, w["hash"]) in published:
                continue
            calm = _outside(w["at"], after["at"], union)
            if calm >= limits.version_due:
                out.append(Violation(
                    "lost-version", f"{resource}/{rid}",
                    f"version {w['hash'][:8]} (updated_at {w['updated_ms']}) was current "
                    f"{after['at'] - w['at']:.1f}s, {calm:.1f}s of it with no fault, and "
                    "never published", w["at"],
                    _around(ev.faults, w["at"], 3.0)))
    return out


def check_event_ids(ev: Evidence) -> list[Violation]:
    counts = Counter(str(e["id"]) for e in ev.events)
    return [Violation("duplicate-id", i, f"in the stream {n} times")
            for i, n in counts.items() if n > 1]


def check_deliveries(ev: Evidence, limits: Limits) -> list[Violation]:
    out: list[Violation] = []
    causes = sorted((f.start, limits.duplicate_causes[f.kind]) for f in ev.faults
                    if f.kind in limits.duplicate_causes)
    types = {str(e["id"]): str(e["type"]) for e in ev.events}
    for sub in ev.subscribers:
        def wanted(t: str, sub: Subscriber = sub) -> bool:
            return any(fnmatch.fnmatchcase(t, p) for p in sub.patterns)

        ok: dict[str, list[Receipt]] = defaultdict(list)
        for r in sub.receipts:
            if r.problem:
                out.append(Violation("malformed", f"{sub.name} {r.webhook_id}", r.problem,
                                     r.at))
            if r.webhook_id in types and not wanted(types[r.webhook_id]):
                out.append(Violation("filter", f"{sub.name} {r.webhook_id}",
                                     f"{types[r.webhook_id]} does not match {sub.patterns}",
                                     r.at))
            elif r.webhook_id not in types:
                out.append(Violation("phantom", f"{sub.name} {r.webhook_id}",
                                     "delivered an event the stream does not hold", r.at))
            if r.success:
                ok[r.webhook_id].append(r)
        # A subscriber never gets the notice of its own disabling (it is disabled when the
        # notice is published, and skips it when enabled again).
        own = {str(e["id"]) for e in ev.events if e["type"] == "notifier.subscriber.disabled"
               and (e.get("data") or {}).get("subscriber") == sub.name}
        for eid in own & set(ok):
            out.append(Violation("own-notice", f"{sub.name} {eid}",
                                 "received the notice of its own disabling"))
        for eid, etype in types.items():
            if wanted(etype) and not ok.get(eid) and eid not in own:
                tries = sum(1 for r in sub.receipts if r.webhook_id == eid)
                out.append(Violation("undelivered", f"{sub.name} {eid}",
                                     f"{etype} never acknowledged ({tries} attempts)"))
        for eid, receipts in ok.items():
            receipts.sort(key=lambda r: r.at)
            for first, again in itertools.pairwise(receipts):
                near = [k for k, after in causes
                        if first.at - 1.0 <= k <= first.done + after and k <= again.at]
                if not near:
                    out.append(Violation(
                        "duplicate-delivery", f"{sub.name} {eid}",
                        f"acknowledged at +{first.done - ev.started:.1f}s and again at "
                        f"+{again.at - ev.started:.1f}s, and the daemon was not stopped "
                        "while the first was in flight", again.at,
                        _around(ev.faults, first.at, 3.0)))
    return out


def check_budget(ev: Evidence, limits: Limits) -> list[Violation]:
    out: list[Violation] = []
    per: Counter[float] = Counter()
    for r in ev.requests:
        if r["token"] == limits.token:
            at = float(r["at"])
            per[at - at % limits.rate_window] += 1
    for start, n in sorted(per.items()):
        if n > limits.share + limits.budget_slack:
            out.append(Violation("budget", f"window +{start - ev.started:.0f}s",
                                 f"{n} requests, share {limits.share} "
                                 f"(+{limits.budget_slack} in flight)", start))
    return out


def _excused(a: float, b: float, excused: list[tuple[float, float, str]]) -> bool:
    return any(s < b and a < e for s, e, _ in excused)


def check_keepalive(ev: Evidence, limits: Limits) -> list[Violation]:
    used = sorted(float(r["at"]) for r in ev.requests
                  if r["token"] == limits.token and r["status"] != 401)
    out: list[Violation] = []
    bound = limits.keepalive_interval + limits.idle_slack
    for a, b in itertools.pairwise(used):
        if b - a > bound and not _excused(a, b, ev.excused):
            out.append(Violation("idle", "key", f"unused for {b - a:.1f}s "
                                 f"(keepalive_interval {limits.keepalive_interval}s)", a))
    return out


def check_status(ev: Evidence) -> list[Violation]:
    """``status --json`` against Redis read directly and against the sandbox."""
    s = ev.status
    if s is None:
        return [Violation("status", "status --json", "no output")]
    out: list[Violation] = []
    xlen = ev.redis.get("xlen")
    if s["stream"]["length"] != xlen:
        out.append(Violation("status", "stream", f"length {s['stream']['length']}, "
                             f"XLEN {xlen}"))
    live: Counter[str] = Counter()
    last: dict[tuple[str, str], bool] = {}
    for w in ev.writes:
        last[(w["resource"], w["record_id"])] = w["deleted"]
    for (resource, _), deleted in last.items():
        if not deleted:
            live[resource] += 1
    for p in s["practices"]:
        if p["key"]["state"] != "ok":
            out.append(Violation("status", f"practice {p['name']}",
                                 f"key state {p['key']['state']} at the end"))
        for r in p["resources"]:
            if r["tracked"] != live[r["resource"]]:
                out.append(Violation("status", f"{p['name']}/{r['resource']}",
                                     f"tracks {r['tracked']} records, Dentally has "
                                     f"{live[r['resource']]}"))
            if not r["synced"]:   # a window may be pending: stopped in the middle of a poll
                out.append(Violation("status", f"{p['name']}/{r['resource']}",
                                     "first sync never finished"))
    groups = ev.redis.get("groups", {})
    for sub in s["subscribers"]:
        g = groups.get(sub["name"], {})
        if (sub["pending"], sub["lag"]) != (g.get("pending"), g.get("lag")):
            out.append(Violation("status", f"subscriber {sub['name']}",
                                 f"pending/lag {sub['pending']}/{sub['lag']}, Redis "
                                 f"{g.get('pending')}/{g.get('lag')}"))
        if not sub["enabled"] or sub["pending"] or sub["lag"] or sub["dead_letters"]:
            out.append(Violation("status", f"subscriber {sub['name']}",
                                 f"not drained: enabled {sub['enabled']}, pending "
                                 f"{sub['pending']}, lag {sub['lag']}, dead letters "
                                 f"{sub['dead_letters']}"))
    return out


def table(ev: Evidence, violations: list[Violation], seed: int, minutes: float) -> str:
    """The campaign's summary: changes, events, deliveries, faults, violations."""
    t0 = ev.started
    changes = Counter("delete" if w["deleted"] else "write" for w in ev.writes)
    records = {(w["resource"], w["record_id"]) for w in ev.writes}
    kinds = Counter(_kind(e) if not str(e["type"]).startswith("notifier.") else e["type"]
                    for e in ev.events)
    faults = Counter(f.kind for f in ev.faults)
    span = max(1e-9, (ev.ended - ev.started) / 60)
    lines = [f"campaign seed {seed}: {minutes:.1f} min of faults, "
             f"{(ev.ended - ev.started):.0f}s in all",
             f"  changes in Dentally   {len(ev.writes)} writes to {len(records)} records "
             f"({changes['delete']} deletes)",
             f"  events in the stream  {len(ev.events)}: "
             + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
             f"  API requests          {sum(1 for r in ev.requests)} "
             f"({Counter(r['status'] for r in ev.requests).most_common()})"]
    for sub in ev.subscribers:
        ok = sum(1 for r in sub.receipts if r.success)
        lines.append(f"  deliveries {sub.name:<10} {len(sub.receipts)} requests, {ok} "
                     f"acknowledged, {len({r.webhook_id for r in sub.receipts})} events")
    lines.append(f"  faults injected       {sum(faults.values())} "
                 f"({sum(faults.values()) / span:.1f}/min)")
    for k, n in sorted(faults.items()):
        lines.append(f"    {k:<24} {n}")
    lines.append(f"  violations            {len(violations)}")
    by_check = Counter(v.check for v in violations)
    for k, n in sorted(by_check.items()):
        lines.append(f"    {k:<24} {n}")
    for v in violations[:25]:
        lines.append("  " + v.render(t0).replace("\n", "\n  "))
    if len(violations) > 25:
        lines.append(f"  ... and {len(violations) - 25} more")
    if violations:
        lines.append(f"  replay: make soak ARGS='--seed {seed} --minutes {minutes:g}'")
    return "\n".join(lines)
