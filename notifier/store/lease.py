"""The practice lease: at most one writer per practice, proven by a fencing token.

Two daemons (or two runners of one daemon during a reload) polling one practice would
publish every change twice. A lease decides who polls, but a lease alone cannot stop a
writer that was paused past its expiry (a GC pause, a stalled event loop, a network
partition) from committing after another took over. So every lease carries a **fencing
token**: ``<epoch>:<holder>``, where the epoch comes from ``INCR`` on a counter that never
goes back, and the commit script (``store.redis.COMMIT``) applies a page only while the
lease key still holds the committing writer's token. Whatever the timing, a writer whose
lease expired or was taken over commits nothing (Kleppmann, "How to do distributed
locking").

Liveness is by expiry alone: a holder that stops renewing (killed, partitioned) loses the
lease ``ttl`` later. No PID or host name is trusted, so daemons in containers that share a
hostname cannot take the lease from each other.

A reload hands the lease over without a gap: the new runner takes it over from the old
runner's token in one step (a new epoch), so the key never reads empty and the old
runner's late commits, renewals and release all find a token that is no longer theirs.

    <prefix>:{<practice>}:lock    string  "<epoch>:<holder>", PX ttl
    <prefix>:{<practice>}:epoch   string  the epoch counter (INCR), never expires
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

# KEYS: lock, epoch counter. ARGV: holder, ttl ms, token to take over from ('' for none).
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.match(cur, '^%d+:(.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, cur}
  end
  if cur ~= ARGV[3] then return {0, cur} end
end
local value = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Token:
    """A held lease: the value of the lease key while we hold it."""

    value: str

    @property
    def epoch(self) -> int:
        return int(self.value.partition(":")[0])

    @property
    def holder(self) -> str:
        return self.value.partition(":")[2]


def describe(value: str | None) -> str:
    """``epoch 12, held by host:pid:...`` for messages (a token holds no secret)."""
    if not value:
        return "nobody"
    epoch, _, holder = value.partition(":")
    return f"{holder}, epoch {epoch}"


class Lease:
    """One practice's lease in Redis, for one holder (one runner instance)."""

    def __init__(self, redis: Redis, lock_key: str, epoch_key: str, holder: str,
                 ttl: float) -> None:
        self.redis, self.key, self.epoch_key, self.holder = redis, lock_key, epoch_key, holder
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token: Token | None = None
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    async def acquire(self, take_over: str | None = None) -> str | None:
        """Take the lease if it is free (or held by ``take_over``, a token being handed on):
        None once held (``self.token`` set), else the current holder's token."""
        ok, value = await self._acquire(keys=[self.key, self.epoch_key],
                                        args=[self.holder, self.ttl_ms, take_over or ""])
        if int(ok):
            self.token = Token(_text(value))
            return None
        self.token = None
        return _text(value)

    async def renew(self) -> bool:
        """Extend the lease; False if it is no longer ours (expired or taken over)."""
        if self.token is None:
            return False
        if await self._renew(keys=[self.key], args=[self.token.value, self.ttl_ms]):
            return True
        self.token = None
        return False

    async def holder_now(self) -> str | None:
        value = await self.redis.get(self.key)
        return None if value is None else _text(value)

    async def release(self) -> None:
        """Give the lease up if it is still ours (a stop, not a crash: hands on at once)."""
        token, self.token = self.token, None
        if token is not None:
            await self._release(keys=[self.key], args=[token.value])
