"""Operator commands: ``redeliver`` and ``subscriber enable`` act on one subscriber,
``reconcile`` on one practice's resource."""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol, TextIO, TypeVar

from redis.asyncio import Redis

from notifier import config
from notifier.config import PracticeConfig, Settings, SubscriberConfig
from notifier.core.shaping import Skip, shape
from notifier.core.text import plural
from notifier.core.timefmt import parse_ms
from notifier.delivery.sender import Attempt, Sender
from notifier.errors import ConfigError
from notifier.store.connection import connect
from notifier.store.delivery import DeliveryStore
from notifier.store.keys import Keys


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def _by_name(items: Sequence[T], name: str, what: str) -> T:
    for item in items:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in items) or "none"
    raise ConfigError(f"no {what} named {name!r} in the config (configured: {known})")


def find(settings: Settings, name: str) -> SubscriberConfig:
    return _by_name(settings.subscribers, name, "subscriber")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _scan(redis: Redis, stream: str, start: str = "-") -> Any:
    """Every entry of ``stream`` from ``start``, in chunks."""
    while True:
        chunk: Any = await redis.xrange(stream, start, "+", count=1000)
        for entry in chunk:
            yield entry
        if len(chunk) < 1000:
            return
        last = _text(chunk[-1][0])
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def _identity(payload: bytes) -> dict[str, str]:
    """The stream entry fields shaping reads, from the envelope itself (``--since`` and
    by-id lookups have the payload at hand)."""
    try:
        envelope = json.loads(payload)
        data = envelope.get("data") or {}
        etype = str(envelope.get("type", ""))
        resource = "" if etype.startswith("notifier.") else str(data.get("resource", ""))
        return {"practice": str(data.get("practice", "")), "resource": resource,
                "type": etype}
    except (ValueError, AttributeError):
        return {}


async def redeliver(settings: Settings, name: str, out: TextIO, *, event_id: str | None = None,
                    since: str | None = None) -> bool:
    """Send a subscriber's dead letters (default), one event by id, or every matching
    event since a time. True when every one was accepted (2xx)."""
    sub = find(settings, name)
    redis = await connect(settings.redis.url)
    db = DeliveryStore(redis, Keys(settings.redis.prefix), settings.redis.stream, name)
    rules = sub.shape(config.regions(settings))
    sender = Sender(sub.url, sub.secret_values(), timeout=sub.timeout,
                    max_in_flight=sub.max_in_flight, allow_private=sub.allow_private,
                    headers=sub.header_values(), content_type=rules.content_type)
    # (dead-letter entry, stream entry, event id, payload)
    todo: list[tuple[str | None, str | None, str, bytes]] = []
    try:
        if since is not None:
            try:
                ms = parse_ms(since)
            except ValueError as exc:
                raise ConfigError(f"--since: {exc}") from None
            # Any time before the stream's first entry (even before 1970) means all of it.
            start = f"{ms}-0" if ms > 0 else "-"
            async for entry_id, f in _scan(redis, settings.redis.stream, start):
                if any(fnmatch.fnmatchcase(_text(f[b"type"]), p) for p in sub.events):
                    todo.append((None, _text(entry_id), _text(f[b"id"]), f[b"payload"]))
        else:
            async for entry_id, f in _scan(redis, db.k_dead):
                if event_id is None or _text(f[b"id"]) == event_id:
                    todo.append((_text(entry_id), None, _text(f[b"id"]), f[b"payload"]))
            if event_id is not None and not todo:
                async for entry_id, f in _scan(redis, settings.redis.stream):
                    if _text(f[b"id"]) == event_id:
                        todo.append((None, _text(entry_id), event_id, f[b"payload"]))
                        break
            if event_id is not None and not todo:
                print(f"event {event_id} is neither a dead letter of {name} nor in the "
                      "retained stream", file=out)
                return False
        failed = 0
        for dead_entry, entry, eid, payload in todo:
            # Take over the event's scheduled retry, so that it does not fire later too.
            due = await db.take_over(entry) if entry is not None else None
            body = shape(rules, {"payload": payload, **_identity(payload)})
            if isinstance(body, Skip):  # not for this subscriber (its filters)
                body = b""
            attempt = await sender.send(eid, body) if body else Attempt(204, 0.0)
            ok = attempt.status is not None and 200 <= attempt.status < 300
            if ok and dead_entry is not None:
                await db.forget_dead(dead_entry)
            if entry is not None:
                if ok:
                    await db.redelivered(entry)
                elif due is not None:  # give the retry back, if the event still needs it
                    await db.schedule_retry(entry, await db.tries(entry), due, time.time())
            await db.log_attempt(at=time.time(), event=eid, status=attempt.status,
                                 latency=round(attempt.latency, 4), error=attempt.error,
                                 attempt=0, redelivery=True)
            failed += not ok
            print(f"{eid}  {'ok' if ok else 'FAILED'}  {attempt.status or attempt.error}",
                  file=out)
        print(f"redelivered {len(todo) - failed} of {len(todo)} to {name}", file=out)
        return failed == 0
    finally:
        await sender.aclose()
        await redis.aclose()


async def enable(settings: Settings, name: str, out: TextIO) -> None:
    find(settings, name)
    redis = await connect(settings.redis.url)
    try:
        db = DeliveryStore(redis, Keys(settings.redis.prefix), settings.redis.stream, name)
        was = await db.enable(time.time())
        print(f"subscriber {name} {'enabled' if was else 'was not disabled'}; a running "
              "daemon resumes delivery within a second", file=out)
    finally:
        await redis.aclose()


def find_practice(settings: Settings, name: str) -> PracticeConfig:
    return _by_name(settings.practices, name, "practice")


async def reconcile(settings: Settings, practice: str, resource: str, out: TextIO, *,
                    accept: bool) -> bool:
    """Ask the running daemon for a reconciliation sweep of one resource now; with
    ``accept``, also accept the deletions a sweep held (``max_delete_fraction``). False
    when there was nothing to accept."""
    cfg = find_practice(settings, practice)
    if resource not in cfg.resources:
        raise ConfigError(f"practice {practice!r} does not poll {resource!r} "
                          f"(resources: {', '.join(cfg.resources)})")
    redis = await connect(settings.redis.url)
    key = Keys(settings.redis.prefix).cursor(practice, resource)
    try:
        raw: Any = await redis.hget(key, "reconcile_held")
        held = json.loads(raw) if raw else None
        fields: dict[Any, Any] = {"reconcile_due": str(time.time())}
        if accept:
            if not held:
                print(f"no deletions are held for {practice}/{resource}; nothing to accept",
                      file=out)
                return False
            fields["reconcile_accept"] = str(int(held["would_delete"]))
        await redis.hset(key, mapping=fields)
    finally:
        await redis.aclose()
    if accept and held:
        tracked = plural(int(held["tracked"]), f"{resource} record", f"{resource} records")
        print(f"accepted up to {plural(int(held['would_delete']), 'deletion')} of {tracked}; "
              f"the running daemon sweeps {resource} again at its next poll and publishes "
              "the deletions it confirms (each by a 404)", file=out)
    else:
        print(f"sweep of {practice}/{resource} requested; the running daemon starts it at "
              "its next poll", file=out)
        if held:
            print(f"held: the last sweep would delete {held['would_delete']} of "
                  f"{held['tracked']} records; accept with `dentally-notifier reconcile "
                  f"{practice} {resource} --accept`", file=out)
    return True
