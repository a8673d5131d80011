"""The contract as documents: JSON Schema (2020-12) per event type, OpenAPI 3.1 with a
``webhooks`` section (importable by Svix and Convoy), AsyncAPI 3 for the Redis stream.

Generated from :mod:`notifier.schema.models` by ``dentally-notifier schema`` and committed
under ``docs/schema/``; a test regenerates them and fails when the committed ones differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from notifier.schema.models import CATALOG, SCHEMA_VERSION, envelope, model_name

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://dentally-notifier.invalid/schema/v1/"
FORMATS = ("jsonschema", "openapi", "asyncapi")
TITLE = "dentally-notifier events"

STREAM_FIELDS_DOC = {
    "id": "the event id (as in the payload)",
    "type": "the event type",
    "practice": "the practice's name ('' for events about a subscriber)",
    "resource": "the Dentally resource ('' for notifier.* events)",
    "record_id": "the record's id ('' for notifier.* events)",
    "payload": "the JSON document, exactly as webhooks carry it",
}


def _strict(node: Any) -> None:
    """additionalProperties false on every object that lists its properties, but the
    Dentally record (open: Dentally adds fields)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node \
                and node.get("title") != "Record":
            node.setdefault("additionalProperties", False)
        for v in node.values():
            _strict(v)
    elif isinstance(node, list):
        for v in node:
            _strict(v)


def json_schema(type_: str, *, strict: bool = False) -> dict[str, Any]:
    """One event type's document as a standalone JSON Schema 2020-12.

    ``strict`` refuses unknown properties (our own tests: what we publish must be exactly
    what the models say); the published schemas allow them (additive changes)."""
    schema = envelope(type_).model_json_schema(ref_template="#/$defs/{model}")
    if strict:
        _strict(schema)
    return {"$schema": DIALECT, "$id": f"{BASE_ID}{type_}.json", **schema}


def all_json_schemas(*, strict: bool = False) -> dict[str, dict[str, Any]]:
    return {t: json_schema(t, strict=strict) for t in CATALOG}


def _components() -> dict[str, Any]:
    """Every envelope as one set of named schemas (``#/components/schemas/...``)."""
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (envelope(t), "validation") for t in CATALOG]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return dict(top.get("$defs", {}))


SIGNATURE_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True,
     "description": "the event id: stable across retries; deduplicate on it",
     "schema": {"type": "string"}},
    {"name": "webhook-timestamp", "in": "header", "required": True,
     "description": "this attempt's time, Unix seconds", "schema": {"type": "string"}},
    {"name": "webhook-signature", "in": "header", "required": True,
     "description": "Standard Webhooks: space-separated `v1,<base64 HMAC-SHA256 of "
                    "id.timestamp.body>`, one per secret", "schema": {"type": "string"}},
]


def openapi() -> dict[str, Any]:
    """OpenAPI 3.1: one webhook per event type, its body the envelope of that type."""
    webhooks: dict[str, Any] = {}
    for t, et in CATALOG.items():
        webhooks[t] = {"post": {
            "operationId": t,
            "summary": t,
            "description": f"Fires when {et.when}.",
            "tags": [et.group],
            "parameters": SIGNATURE_HEADERS,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model_name(t)}"}}}},
            "responses": {
                "2XX": {"description": "received: answer quickly; anything else is retried"},
                "410": {"description": "gone: the notifier disables the subscriber"},
            },
        }}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": DIALECT,
        "info": {"title": TITLE, "version": f"{SCHEMA_VERSION}.0",
                 "description": "Webhooks POSTed by dentally-notifier, signed per Standard "
                                "Webhooks. Within a major version changes are additive: "
                                "ignore unknown fields and event types."},
        "tags": [{"name": "record", "description": "a record was created, updated or "
                                                   "deleted in Dentally"},
                 {"name": "derived", "description": "what a change means (derived from it)"},
                 {"name": "notifier", "description": "about the notifier itself"}],
        "webhooks": webhooks,
        "components": {"schemas": _components()},
    }


def asyncapi() -> dict[str, Any]:
    """AsyncAPI 3: the Redis stream, each entry's fields, the envelope in ``payload``."""
    messages: dict[str, Any] = {}
    for t, et in CATALOG.items():
        name = model_name(t)
        messages[name] = {
            "name": t,
            "title": t,
            "summary": f"Fires when {et.when}.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "description": "a stream entry's fields",
                "required": list(STREAM_FIELDS_DOC),
                "properties": {
                    **{k: {"type": "string", "description": v}
                       for k, v in STREAM_FIELDS_DOC.items() if k != "payload"},
                    "type": {"const": t, "description": STREAM_FIELDS_DOC["type"]},
                    "payload": {"type": "string", "description": STREAM_FIELDS_DOC["payload"],
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": f"#/components/schemas/{name}"}},
                },
            },
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": TITLE + " (Redis stream)", "version": f"{SCHEMA_VERSION}.0",
                 "description": "Every event is appended to one Redis stream (`[redis] "
                                "stream`) as an entry with the fields below; `payload` is "
                                "the same JSON document the webhooks carry. Read it with "
                                "XREAD or a consumer group of your own."},
        "defaultContentType": "application/json",
        "servers": {"redis": {"host": "127.0.0.1:6379", "protocol": "redis",
                              "description": "the `[redis] url` of the config"}},
        "channels": {"events": {
            "address": "dentally:events",
            "description": "the stream (`[redis] stream`; default dentally:events)",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in messages},
        }},
        "operations": {"readEvents": {
            "action": "receive",
            "summary": "XREAD / XREADGROUP the stream",
            "channel": {"$ref": "#/channels/events"},
            "messages": [{"$ref": f"#/channels/events/messages/{n}"} for n in messages],
        }},
        "components": {"messages": messages, "schemas": _components()},
    }


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def render(fmt: str) -> dict[str, str]:
    """The files of one format (or ``all``): relative path -> text."""
    files: dict[str, str] = {}
    if fmt in ("jsonschema", "all"):
        for t, schema in all_json_schemas().items():
            files[f"jsonschema/{t}.json"] = _dump(schema)
    if fmt in ("openapi", "all"):
        files["openapi.json"] = _dump(openapi())
    if fmt in ("asyncapi", "all"):
        files["asyncapi.json"] = _dump(asyncapi())
    return files


def write(fmt: str, out: Path) -> list[Path]:
    """Write the files of ``fmt`` under ``out``; the paths written."""
    written = []
    for rel, text in render(fmt).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stdout_document(fmt: str) -> str:
    """One document for the terminal: the JSON Schemas as one object keyed by type."""
    if fmt == "openapi":
        return _dump(openapi())
    if fmt == "asyncapi":
        return _dump(asyncapi())
    return _dump(all_json_schemas())
