"""Every Redis key name the notifier uses, in one place.

All keys start with the configured prefix (``[redis] prefix``, default
``dentally-notifier``), so one Redis can hold several deployments and tests can use their own.
A practice's keys share the hash tag ``{practice}`` so that they would live in one Cluster
slot. The event stream's name is configured on its own (``[redis] stream``).

    <prefix>:{<practice>}:cursor:<resource>   hash   cursor, pending windows, last poll/error
    <prefix>:{<practice>}:snap:<resource>     hash   record id -> compressed snapshot
    <prefix>:{<practice>}:zdict:<resource>    string compression dictionary of the snapshots
    <prefix>:{<practice>}:lock                string the daemon instance polling the practice
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

    def lock(self, practice: str) -> str:
        return f"{self._p(practice)}:lock"

    def pattern(self) -> str:
        """Matches every key under the prefix (the stream is named separately)."""
        return f"{self.prefix}:*"
