"""Deletions that fail closed.

A reconciliation sweep lists every id Dentally has and compares them with the ids we hold;
an id it did not see is fetched on its own and a 404 confirms the deletion. If one sweep
would delete more than ``max_delete_fraction`` of a resource's tracked records, something
is more likely wrong than true (a key that now reads another practice, a truncated
listing): the sweep publishes none of those deletions, says so once
(``notifier.reconcile.suspicious``), and holds them until a person accepts them
(``dentally-notifier reconcile NAME RESOURCE --accept``).
"""

from __future__ import annotations

from dataclasses import dataclass

SUSPICIOUS = "notifier.reconcile.suspicious"


@dataclass(frozen=True)
class Deletions:
    tracked: int
    """Records we held when the sweep began."""
    missing: int
    """Held ids the listing did not show."""
    confirmed: int
    """Of those, ids that answered 404 on their own: the deletions the sweep would publish."""

    def suspicious(self, max_fraction: float) -> bool:
        """Whether publishing ``confirmed`` deletions needs a person's acceptance."""
        return self.confirmed > 0 and self.confirmed > max_fraction * self.tracked

    def data(self, resource: str, max_fraction: float, action: str) -> dict[str, object]:
        """The ``data`` of the ``notifier.reconcile.suspicious`` event."""
        return {"resource": resource, "tracked": self.tracked, "missing": self.missing,
                "would_delete": self.confirmed, "max_delete_fraction": max_fraction,
                "action": action}


def allowed(deletions: Deletions, max_fraction: float, accepted: int | None) -> bool:
    """Publish the confirmed deletions now? Yes unless suspicious and not accepted.

    ``accepted``: how many deletions a person accepted (the count held when they looked),
    or None. It covers a sweep that would delete as many or fewer; more than that is held
    again, for a new look."""
    if accepted is not None and deletions.confirmed <= accepted:
        return True
    return not deletions.suspicious(max_fraction)
