"""Subscriber event patterns (``fnmatch`` globs on the event type) checked against the
event types that exist, so that ``patients.*`` (for ``patient.*``) is caught before a
subscriber waits for events that never come. Pure: the known types are passed in."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PatternProblem:
    pattern: str
    severity: Literal["FAIL", "warn"]
    message: str


def matches(pattern: str, event_type: str) -> bool:
    return fnmatch.fnmatchcase(event_type, pattern)


def _suggest(pattern: str, known: Sequence[str]) -> str | None:
    """The closest real pattern: compare ``patients.*`` with the ``<prefix>.*`` globs and
    the exact types, keeping the pattern's own shape."""
    candidates = sorted({t.rsplit(".", 1)[0] + ".*" for t in known} | set(known))
    close = difflib.get_close_matches(pattern, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def check_patterns(patterns: Iterable[str], known: Sequence[str],
                   polled: Iterable[str]) -> list[PatternProblem]:
    """``FAIL`` for a pattern that matches no event type at all; ``warn`` for one that
    matches only record events of resources no practice polls (nothing would arrive).
    ``polled`` holds the singular names of the resources some practice polls."""
    polled = set(polled)
    problems = []
    for pattern in patterns:
        hits = [t for t in known if matches(pattern, t)]
        if not hits:
            hint = _suggest(pattern, known)
            problems.append(PatternProblem(
                pattern, "FAIL", f"pattern {pattern!r} matches no event type"
                + (f"; did you mean {hint!r}?" if hint else "")))
            continue
        record_hits = [t for t in hits if not t.startswith("notifier.")]
        if record_hits and len(record_hits) == len(hits) and not any(
                t.rsplit(".", 1)[0] in polled for t in record_hits):
            kinds = sorted({t.rsplit(".", 1)[0] for t in record_hits})
            problems.append(PatternProblem(
                pattern, "warn", f"pattern {pattern!r} matches only {', '.join(kinds)} "
                "events, and no practice polls that resource"))
    return problems
