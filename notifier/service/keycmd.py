"""``dentally-notifier key retry PRACTICE``: ask the running daemon to probe a key now.

A revoked or expired key is probed every ``key_probe_interval`` (default an hour). Once a
person has fixed it in Dentally, waiting for that hour is pointless: this command leaves a
flag in Redis that the practice's runner picks up within a second; it probes the key at
once (and rechecks denied scopes), then the command reports what the probe found.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

import anyio

from notifier.config import Settings
from notifier.errors import ConfigError
from notifier.service.daemon import connect
from notifier.store.keys import Keys

FLAG_TTL = 3600      # a flag nobody picks up (no daemon running) goes away by itself
WAIT = 15.0          # how long the command waits for the daemon's probe


async def retry(settings: Settings, practice: str, out: TextIO, wait: float = WAIT) -> bool:
    """True when a running daemon probed the key (whatever the probe found)."""
    names = [p.name for p in settings.practices]
    if practice not in names:
        raise ConfigError(f"no practice named {practice!r} in the config "
                          f"(configured: {', '.join(names) or 'none'})")
    keys = Keys(settings.redis.prefix)
    redis = await connect(settings)
    try:
        asked = time.time()
        await redis.set(keys.key_retry(practice), str(asked), ex=FLAG_TTL)
        print(f"asked the daemon to probe the key of {practice} now", file=out)
        deadline = anyio.current_time() + wait
        picked_up = False
        while anyio.current_time() < deadline:
            await anyio.sleep(0.2)
            picked_up = picked_up or not await redis.exists(keys.key_retry(practice))
            if not picked_up:
                continue
            raw: Any = await redis.hgetall(keys.key_state(practice))
            state = {k.decode(): v.decode() for k, v in raw.items()}
            probed = _float(state.get("last_probe_at"))
            if state.get("probing") != "1" and (state.get("state") == "ok"
                                                or (probed or 0) >= asked):
                print(f"key {state.get('fingerprint', '?')}: {state.get('state')}"
                      + (f" ({state['reason']})" if state.get("reason") else ""), file=out)
                return True
        print(f"no running daemon picked the request up within {wait:.0f}s; a daemon "
              "probes every key at start anyway", file=out)
        return False
    finally:
        await redis.aclose()


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
