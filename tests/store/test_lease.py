"""The practice lease and its fencing token, against a real Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from notifier.core.cursor import Progress
from notifier.errors import LeaseLost
from notifier.events import record_event
from notifier.store.lease import Lease, describe
from notifier.store.redis import Store

T = datetime(2026, 11, 27, tzinfo=UTC)


def lease(store: Store, holder: str, ttl: float = 5.0) -> Lease:
    return Lease(store.redis, store.keys.lock("main"), store.keys.lease_epoch("main"),
                 holder, ttl)


def event(i: int) -> object:
    return record_event("main", "patients", "created",
                        {"id": i, "updated_at": "2026-11-27T10:00:00.000Z"}, T)


async def test_lease_is_exclusive_and_each_holder_gets_a_higher_epoch(store: Store) -> None:
    a, b = lease(store, "host:1:a"), lease(store, "host:1:b")
    assert await a.acquire() is None and a.token is not None
    assert await b.acquire() == a.token.value        # the same host and pid: still no
    assert await a.acquire() is None                 # idempotent for its own holder
    assert await a.renew()
    first = a.token.epoch
    await a.release()
    assert await store.redis.get(store.keys.lock("main")) is None
    assert await b.acquire() is None and b.token is not None
    assert b.token.epoch > first
    assert not await a.renew()                       # a released: renewing does nothing
    await a.release()
    assert await b.renew()
    assert "host:1:b" in describe(b.token.value)


async def test_a_stale_writers_commit_is_refused_whatever_the_timing(store: Store) -> None:
    """A writer paused past its lease's expiry wakes up and commits: refused, while the
    writer that took over commits; the stream and cursor hold only the new writer's page."""
    a = lease(store, "host:1:a", ttl=0.2)
    assert await a.acquire() is None and a.token is not None
    stale = a.token.value
    assert await store.commit("main", "patients", progress=Progress(cursor=1),
                              events=[event(1)], fence=stale)  # type: ignore[list-item]
    await anyio.sleep(0.3)                           # a's lease expires during its "pause"
    b = lease(store, "host:2:b")
    assert await b.acquire() is None and b.token is not None
    with pytest.raises(LeaseLost):
        await store.commit("main", "patients", progress=Progress(cursor=2),
                           events=[event(2)], fence=stale)  # type: ignore[list-item]
    assert await store.commit("main", "patients", progress=Progress(cursor=3),
                              events=[event(3)], fence=b.token.value)  # type: ignore[list-item]
    assert (await store.progress("main", "patients")).cursor == 3
    assert await store.redis.xlen(store.stream) == 2


async def test_handover_takes_the_lease_without_a_gap_and_fences_the_old_holder(
        store: Store) -> None:
    old, new = lease(store, "host:1:old"), lease(store, "host:1:new")
    assert await old.acquire() is None and old.token is not None
    handed = old.token.value
    assert await new.acquire(take_over=handed) is None and new.token is not None
    assert new.token.epoch == old.token.epoch + 1
    # The old runner's late commit, renewal and release all find a token not theirs.
    with pytest.raises(LeaseLost):
        await store.commit("main", "patients", progress=Progress(cursor=9),
                           events=[event(9)], fence=handed)  # type: ignore[list-item]
    assert not await old.renew()
    await old.release()
    assert await store.redis.get(store.keys.lock("main")) == new.token.value.encode()
    # A takeover from a token that is no longer current is an ordinary, refused acquire.
    third = lease(store, "host:2:x")
    assert await third.acquire(take_over=handed) == new.token.value


async def test_an_expired_lease_is_free_without_any_liveness_guess(store: Store) -> None:
    a = lease(store, "host:1:a", ttl=0.2)
    b = lease(store, "host:1:b")
    assert await a.acquire() is None
    assert await b.acquire() is not None
    await anyio.sleep(0.3)
    assert await b.acquire() is None
    assert not await a.renew()
