"""Is the daemon making progress? Each long-running loop promises its next sign of life.

A loop calls ``beat(name, within)`` as it works ("I will beat again within N seconds": a
page takes at most the request timeout; a sleep of S seconds is followed by a beat). The
daemon is healthy while no promise is broken; a wedged poller breaks its promise, and the
systemd watchdog stops being fed.

A loop that waits on purpose (a disabled subscriber waiting to be enabled) is *paused*,
not stalled: it calls ``pause(name, reason)`` and makes no promise until its next beat.
Restarting the daemon would not help it, so a pause never starves the watchdog; health
reports it under its reason ("disabled"). Pure: time is passed in.

    loop state   entered by         healthy?
    beating      beat(within)       while now <= the promised time
    paused       pause(reason)      yes (reported as the reason)
    (gone)       forget()           not watched
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Health:
    deadlines: dict[str, float] = field(default_factory=dict)
    pauses: dict[str, str] = field(default_factory=dict)

    def beat(self, name: str, now: float, within: float) -> None:
        self.pauses.pop(name, None)
        self.deadlines[name] = now + within

    def pause(self, name: str, reason: str) -> None:
        self.deadlines.pop(name, None)
        self.pauses[name] = reason

    def forget(self, name: str) -> None:
        self.deadlines.pop(name, None)
        self.pauses.pop(name, None)

    def stalled(self, now: float) -> list[str]:
        """The loops whose promised beat is overdue."""
        return sorted(n for n, d in self.deadlines.items() if d < now)

    def paused(self, reason: str | None = None) -> list[str]:
        """The loops paused on purpose (for ``reason`` only, if given)."""
        return sorted(n for n, r in self.pauses.items() if reason is None or r == reason)

    def report(self, now: float) -> dict[str, object]:
        """What ``/healthz`` answers: ok unless a loop is stalled; paused loops by reason."""
        out: dict[str, object] = {"ok": not self.stalled(now)}
        if self.stalled(now):
            out["stalled"] = self.stalled(now)
        for reason in sorted(set(self.pauses.values())):
            out[reason] = self.paused(reason)
        return out
