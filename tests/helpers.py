"""Helpers shared by tests: reading the stream back, each event checked against the
published contract (``notifier.schema``)."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from redis.asyncio import Redis

from notifier.schema.documents import all_json_schemas


@functools.cache
def _validators() -> dict[str, Draft202012Validator]:
    # Strict: unknown properties refused, so what we publish is exactly what the models say
    # (the committed docs/schema files are the same schemas without that; a test keeps them
    # in step with the models).
    return {t: Draft202012Validator(s, format_checker=Draft202012Validator.FORMAT_CHECKER)
            for t, s in all_json_schemas(strict=True).items()}


def schema_errors(event: dict[str, Any]) -> list[str]:
    """What is wrong with ``event`` against the JSON Schema of its type (empty: valid)."""
    validator = _validators().get(str(event.get("type")))
    if validator is None:
        return [f"unknown event type {event.get('type')!r}"]
    errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
    return [f"{list(e.path)}: {e.message}" for e in errors]


def validate_event(event: dict[str, Any]) -> None:
    """Fail unless ``event`` is of a published type and valid against its JSON Schema."""
    errors = schema_errors(event)
    assert not errors, (f"{event.get('type')} {event.get('id')} does not match its schema: "
                        + "; ".join(errors[:5]))


def is_derived(event: dict[str, Any]) -> bool:
    """A derived event (``appointment.cancelled``, ...): it names the change it came from."""
    return "cause" in (event.get("data") or {})


async def stream_events(redis: Redis, stream: str, *,
                        derived: bool = False) -> list[dict[str, Any]]:
    """Every event in ``stream``, as its parsed payload plus the entry's own fields, each
    validated against its schema. Derived events only with ``derived``: most tests are
    about the field-level events (tests/core/test_derive.py and the pipeline tests are
    about the derived ones)."""
    out = []
    for _entry_id, fields in await redis.xrange(stream):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        event = json.loads(f["payload"])
        assert event["id"] == f["id"] and event["type"] == f["type"]
        assert f["practice"] == event["data"].get("practice", "")
        if "record_id" in event["data"]:
            assert f["record_id"] == event["data"]["record_id"]
            assert f["resource"] == event["data"]["resource"]
        validate_event(event)
        if derived or not is_derived(event):
            out.append(event)
    return out
