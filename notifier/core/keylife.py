"""When to use a key to keep it alive, when to warn, when to probe a dead one.

Dentally expires a key unused for more than two weeks; a revoked key must not be hammered.
Pure: every function takes the current time.
"""

from __future__ import annotations

import hashlib

EXPIRY = 14 * 86400.0          # Dentally expires a key idle for more than this
IDLE_WARNING = 10 * 86400.0    # at start, warn (notifier.key.idle) past this much idleness


def fingerprint(key: str) -> str:
    """A short, one-way identity of a key: tells keys apart without storing them."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def keepalive_wait(last_success: float | None, now: float, interval: float) -> float:
    """Seconds until the key must be used again (0: now)."""
    if last_success is None:
        return 0.0
    return max(0.0, last_success + interval - now)


def idle_days_left(last_success: float | None, now: float) -> float | None:
    """Days until expiry when the key has been idle past the warning threshold, else None."""
    if last_success is None or now - last_success <= IDLE_WARNING:
        return None
    return max(0.0, (last_success + EXPIRY - now) / 86400)


def probe_wait(last_probe: float | None, now: float, interval: float) -> float:
    """Seconds until a revoked key may be probed again."""
    if last_probe is None:
        return 0.0
    return max(0.0, last_probe + interval - now)
