"""``dentally-notifier forget PRACTICE RESOURCE ID``: erase one record (a patient's
right to erasure) from the snapshots, the stream, the dead letters and the attempt logs.

The practice must not be polled meanwhile: its snapshots are rewritten (the compression
dictionary may hold the record's bytes) and a running poller would republish the record
from a change it then sees as new. So ``forget`` takes the practice's lease for itself and
refuses while a daemon holds it. Erase the record in Dentally first: a record that still
exists there comes back with its next change or the next reconciliation sweep.
"""

from __future__ import annotations

import os
import socket
from typing import TextIO

import anyio

from notifier.config import Settings
from notifier.core import resources
from notifier.errors import ConfigError
from notifier.store.connection import connect
from notifier.store.erase import erase
from notifier.store.keys import Keys
from notifier.store.lease import Lease, describe

LEASE_TTL = 30.0
"""Renewed every third of it while erasing: a forget that dies hands the practice back
to the daemon this soon."""


async def _keep(lease: Lease) -> None:
    while True:
        await anyio.sleep(LEASE_TTL / 3)
        await lease.renew()


async def run(settings: Settings, practice: str, resource: str, record_id: str,
              out: TextIO) -> bool:
    """True when the record was erased; False when a running daemon holds the practice."""
    if resource not in resources.RESOURCES:
        raise ConfigError(f"unknown resource {resource!r} (known: "
                          f"{', '.join(sorted(resources.RESOURCES))})")
    if not practice or not record_id:
        raise ConfigError("forget needs PRACTICE RESOURCE ID")
    keys = Keys(settings.redis.prefix)
    redis = await connect(settings.redis.url)
    lease = Lease(redis, keys.lock(practice), keys.lease_epoch(practice),
                  f"forget:{socket.gethostname()}:{os.getpid()}", LEASE_TTL)
    try:
        holder = await lease.acquire()
        if holder is not None:
            print(f"practice {practice!r} is being polled ({describe(holder)}): stop the "
                  "daemon, run forget again, then start it", file=out)
            return False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_keep, lease)
                done = await erase(redis, keys, settings.redis.stream, practice, resource,
                                   record_id)
                tg.cancel_scope.cancel()
        finally:
            await lease.release()
        print(f"{practice}/{resource}/{record_id}: snapshot "
              f"{'removed' if done.snapshot else 'not held'}; {done.stream} stream "
              f"event(s), {done.dead_letters} dead letter(s) and {done.log_entries} attempt "
              f"log entr{'y' if done.log_entries == 1 else 'ies'} removed; compression "
              f"dictionary {done.dictionary}", file=out)
        return True
    finally:
        await redis.aclose()
