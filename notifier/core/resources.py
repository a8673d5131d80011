"""The table of Dentally resources and how each one is polled.

One row per resource keeps every per-resource quirk (which filters work, which extra
parameters are needed, what the event type is called) in one place instead of scattered
``if resource == ...`` branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["incremental", "full"]


@dataclass(frozen=True)
class Resource:
    name: str
    """Path segment and list envelope key, e.g. ``patients``."""
    singular: str
    """Single-object envelope key and event type prefix, e.g. ``patient``."""
    strategy: Strategy = "incremental"
    """``incremental`` polls by ``updated_after``; ``full`` lists everything and diffs."""
    closed_windows: bool = True
    """Whether ``updated_before`` works, so a window can be closed (not on appointments)."""
    params: tuple[tuple[str, str], ...] = field(default=())
    """Extra query parameters every list request needs (``cancelled=true``)."""
    interval: float = 60.0
    """Default seconds between polls."""


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("patients", "patient"),
        Resource("appointments", "appointment", closed_windows=False,
                 params=(("cancelled", "true"),)),
        Resource("invoices", "invoice"),
        Resource("payments", "payment"),
        Resource("sites", "site", strategy="full", interval=3600.0),
    )
}

DEFAULT_RESOURCES: tuple[str, ...] = ("patients", "appointments", "invoices", "payments")


def get(name: str) -> Resource:
    """The resource called ``name``; KeyError names the known ones."""
    try:
        return RESOURCES[name]
    except KeyError:
        known = ", ".join(sorted(RESOURCES))
        raise KeyError(f"unknown resource {name!r} (known: {known})") from None
