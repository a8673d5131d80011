"""One key's rate budget, shared by every request made with that key: a thin async adapter
around :class:`notifier.core.budget.Budget` (which decides everything).

Requests wait in a queue ordered by :class:`~notifier.core.budget.Priority` (key checks,
then steady polls, then bulk work), first come first served within one priority; the head
of the queue goes when the budget allows. Several clients (several practices that use the
same key) may share one ``Pacer``.

A task that waits here calls the heartbeat in :data:`HEARTBEAT` (set per task by the loop
that owns it) at least every :data:`BEAT_EVERY` seconds: waiting for the budget is
progress, not a wedge.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import anyio

from notifier.core.budget import (
    BULK_PATIENCE,
    Action,
    Answer,
    Budget,
    Priority,
    Refusal,
    State,
    classify,
)

log = logging.getLogger("notifier.budget")

HEARTBEAT: ContextVar[Callable[[], None] | None] = ContextVar("pacer_heartbeat",
                                                              default=None)
BEAT_EVERY = 10.0


class Pacer:
    def __init__(self, budget: Budget, *, wall: Callable[[], float] = time.time,
                 extra: dict[str, Any] | None = None) -> None:
        self.budget = budget
        self._wall = wall
        self._extra = extra or {}
        self._queue: list[tuple[int, int, float]] = []   # (priority, order, since)
        self._seq = itertools.count()
        self._changed: anyio.Event | None = None   # made in the event loop, when needed
        self.recorder: Callable[[float], Awaitable[None]] | None = None
        """Told each send time before the request leaves (``store.sendlog``: the share
        holds across restarts); set with the budget restored from it."""

    def _event(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _head(self, now: float) -> tuple[int, int, float]:
        """The request to go next: by priority, then first come; a bulk request that
        has waited :data:`~notifier.core.budget.BULK_PATIENCE` slots goes as a steady one
        (steady polls that need more than the pace cannot starve a backfill)."""
        patience = BULK_PATIENCE * self.budget.slot_seconds
        return min(self._queue, key=lambda e: (
            Priority.STEADY if e[0] == Priority.BULK and now - e[2] > patience else e[0],
            e[1]))

    async def slot(self, priority: Priority) -> float:
        """Wait for this request's turn and the budget; count it as sent. Returns the
        send time (for :meth:`answered`)."""
        entry = (int(priority), next(self._seq), self._wall())
        self._queue.append(entry)
        self._notify()   # a more urgent request may now be first
        try:
            while True:
                changed = self._event()
                now = self._wall()
                if self._head(now) == entry:
                    at, _ = self.budget.earliest(now)
                    if at <= now:
                        self._queue.remove(entry)
                        self.budget.sent(now)
                        self._notify()
                        if self.recorder is not None:
                            await self.recorder(now)
                        return now
                    wait = at - now
                elif priority == Priority.BULK:
                    # Wake when patience turns this request into a steady one: no event
                    # says so.
                    promoted = entry[2] + BULK_PATIENCE * self.budget.slot_seconds
                    wait = max(0.001, promoted - now + 0.001)
                else:
                    wait = BEAT_EVERY
                with anyio.move_on_after(min(wait, BEAT_EVERY)):
                    await changed.wait()
                beat = HEARTBEAT.get()
                if beat is not None:
                    beat()
        finally:
            if entry in self._queue:
                self._queue.remove(entry)
            self._notify()

    def answered(self, sent_at: float, answer: Answer) -> Action:
        """The response to a request sent at ``sent_at``: RETRY for a rate refusal."""
        now = self._wall()
        before = self.budget.rate
        action = self.budget.answered(now, sent_at, answer)
        if action is Action.RETRY:
            at, why = self.budget.earliest(now)
            kind = classify(answer)
            if kind is Refusal.BURST:
                log.warning("Dentally's burst limit answered %d; pace %.2f -> %.2f "
                            "requests/s; the request is sent again in %.1fs",
                            answer.status, before, self.budget.rate, at - now,
                            extra=self._extra)
            else:
                log.warning("Dentally's hourly limit answered %d (%s); nothing is sent for "
                            "%.0fs%s", answer.status, answer.error_message or "no message",
                            at - now, "" if why is State.CAPPED else f" ({why.value})",
                            extra=self._extra)
        self._notify()
        return action

    def snapshot(self) -> dict[str, str]:
        """The budget as ``status`` shows it (strings, for a Redis hash)."""
        b = self.budget
        now = self._wall()
        at, why = b.earliest(now)
        return {"budget_used": str(b.used(now)), "budget_share": str(b.share),
                "budget_window": str(b.window), "budget_state": why.value,
                "budget_next_at": str(at), "budget_rate": f"{b.rate:g}",
                "budget_refused_burst": str(b.refusals["burst"]),
                "budget_refused_hourly": str(b.refusals["hourly"]),
                "server_limit": "" if b.server_limit is None else str(b.server_limit),
                "server_remaining": "" if b.server_remaining is None
                else str(b.server_remaining),
                "server_reset": "" if b.server_reset is None else str(b.server_reset)}
