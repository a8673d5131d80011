"""Is the daemon making progress? Each long-running loop promises its next sign of life.

A loop calls ``beat(name, within)`` as it works ("I will beat again within N seconds": a
page takes at most the request timeout; a sleep of S seconds is followed by a beat). The
daemon is healthy while no promise is broken; a wedged poller breaks its promise, and the
systemd watchdog stops being fed. Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Health:
    deadlines: dict[str, float] = field(default_factory=dict)

    def beat(self, name: str, now: float, within: float) -> None:
        self.deadlines[name] = now + within

    def forget(self, name: str) -> None:
        self.deadlines.pop(name, None)

    def stalled(self, now: float) -> list[str]:
        """The loops whose promised beat is overdue."""
        return sorted(n for n, d in self.deadlines.items() if d < now)
