"""Every Redis key name the notifier uses, in one place.

All keys start with the configured prefix (``[redis] prefix``, default
``dentally-notifier``), so one Redis can hold several deployments and tests can use their own.
A practice's keys share the hash tag ``{practice}`` so that they would live in one Cluster
slot. The event stream's name is configured on its own (``[redis] stream``).

    <prefix>:{<practice>}:cursor:<resource>   hash   cursor, pending windows, last poll/error
    <prefix>:{<practice>}:snap:<resource>     hash   record id -> compressed snapshot
    <prefix>:{<practice>}:zdict:<resource>    string compression dictionary of the snapshots
    <prefix>:{<practice>}:sweep:<resource>    set    ids the sweep in progress saw (-<id>: gone)
    <prefix>:{<practice>}:lock                string the practice lease: "<epoch>:<holder>" (PX)
    <prefix>:{<practice>}:epoch               string the lease's fencing epoch (INCR)
    <prefix>:{<practice>}:key_retry           string an operator's "probe the key now"
    <prefix>:{<practice>}:key                 hash   key state, fingerprint, last success
    <prefix>:{<practice>}:sent                zset   our Dentally requests of the last rate
                                                     window: member -> send time (unix s)
    <prefix>:published:<event id>             string marks a notifier.* event as published
    <prefix>:sub:<name>:retry                 zset   stream entry id -> due time (unix s)
    <prefix>:sub:<name>:tries                 hash   stream entry id -> failed attempts so far
    <prefix>:sub:<name>:dead                  stream dead letters (the event and its last error)
    <prefix>:sub:<name>:state                 hash   disabled, failing since, incidents
    <prefix>:sub:<name>:log                   list   the latest delivery attempts (bounded)

Each subscriber reads the event stream through its own consumer group, named after it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "dentally-notifier"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def _p(self, practice: str) -> str:
        return f"{self.prefix}:{{{practice}}}"

    def cursor(self, practice: str, resource: str) -> str:
        return f"{self._p(practice)}:cursor:{resource}"

    def snapshots(self, practice: str, resource: str) -> str:
        return f"{self._p(practice)}:snap:{resource}"

    def zdict(self, practice: str, resource: str) -> str:
        return f"{self._p(practice)}:zdict:{resource}"

    def sweep(self, practice: str, resource: str) -> str:
        """The ids seen so far by the sweep in progress (its windows are the cursor hash's
        ``sweep`` field), so that a restarted daemon continues the sweep."""
        return f"{self._p(practice)}:sweep:{resource}"

    def key_state(self, practice: str) -> str:
        return f"{self._p(practice)}:key"

    def sent(self, practice: str) -> str:
        """The practice's requests of the last rate window (the share holds across
        restarts: ``store.sendlog``)."""
        return f"{self._p(practice)}:sent"

    def lock(self, practice: str) -> str:
        return f"{self._p(practice)}:lock"

    def lease_epoch(self, practice: str) -> str:
        return f"{self._p(practice)}:epoch"

    def key_retry(self, practice: str) -> str:
        return f"{self._p(practice)}:key_retry"

    def sub(self, name: str, part: str) -> str:
        """A subscriber's key: ``retry``, ``tries``, ``dead``, ``state`` or ``log``."""
        if part not in ("retry", "tries", "dead", "state", "log"):
            raise ValueError(part)
        return f"{self.prefix}:sub:{name}:{part}"
