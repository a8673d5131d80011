"""Signals that arrive before the daemon listens for them.

A daemon on a loaded host can take seconds to import and connect before its event loop
handles signals; until then SIGHUP's and SIGTERM's default action kills it (a
``systemctl reload`` right after a start then looks like a crash, and systemd restarts
it). ``install`` runs first thing in ``dentally-notifier run``: it remembers such signals
instead, and the daemon acts on them (``take``) as soon as it listens: a reload, or a
clean stop. Stdlib only, so that importing it costs nothing.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_pending: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def install() -> None:
    """Remember SIGHUP, SIGTERM and SIGINT until the daemon handles signals itself (also
    after it stops handling them, during the last moments of a shutdown)."""
    for sig in SIGNALS:
        signal.signal(sig, _remember)


def take() -> list[int]:
    """The signals remembered so far, oldest first; forgets them."""
    out = list(_pending)
    del _pending[: len(out)]
    return out
