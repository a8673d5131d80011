"""Who this process is, for lease tokens and messages: host, pid and a random part.

The identity only names a holder; it decides nothing. Liveness is never judged from it
(a PID means nothing across containers that share a host name): leases expire instead.
"""

from __future__ import annotations

import os
import socket
import uuid


def process_name() -> str:
    """``host:pid``: what an operator recognises in ``ps`` and in log lines."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_id() -> str:
    """A new, unique lease holder: ``host:pid:random`` (one per practice runner)."""
    return f"{process_name()}:{uuid.uuid4().hex[:8]}"


def ours(holder: str) -> bool:
    """Whether ``holder`` was made by this very process (a sibling runner of a reload)."""
    return holder.startswith(process_name() + ":")
