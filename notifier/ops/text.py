"""What the notifier prints for people: one readable line per event, and terminal safety.

Record fields come from Dentally (a patient's name is whatever was typed into it), so every
string printed to a terminal goes through ``escape``: control characters (C0, DEL, C1,
including ESC that starts a terminal escape sequence) are shown as ``\\x1b``-style escapes
instead of being interpreted by the operator's terminal.
"""

from __future__ import annotations

import json
import re
from typing import Any, TextIO, cast

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _esc(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters (and bidi overrides) shown as escapes; newlines
    and tabs too unless ``keep_newlines``."""
    return (_CONTROL if keep_newlines else _CONTROL_ALL).sub(_esc, text)


class SafeWriter:
    """A text stream that escapes control characters in everything written to it, keeping
    the line breaks and tabs that the program itself prints."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        return self._out.write(escape(text, keep_newlines=True))

    def flush(self) -> None:
        self._out.flush()

    def isatty(self) -> bool:
        return self._out.isatty()


def _short(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def describe(event: dict[str, Any]) -> str:
    """One readable line for an event (escaped: safe to print to a terminal)."""
    data = event.get("data") or {}
    etype = str(event.get("type", "?"))
    if etype.startswith("notifier."):
        who = data.get("practice") or data.get("subscriber") or ""
        line = f"{etype:<30} {who:<12}"
        details = [f"{k} {_short(data[k])}" for k in ("subscriber", "resource", "key")
                   if k in data and data[k] != who]
        if "expires_in_days" in data:
            details.append(f"expires in {data['expires_in_days']} days")
        if data.get("reason") or data.get("message"):
            details.append(f"reason: {data.get('reason') or data.get('message')}")
        if data.get("action"):
            details.append(f"action: {data['action']}")
        return escape(line + "  " + "; ".join(details))
    what = f"{data.get('resource', '')}/{data.get('record_id', '')}"
    line = f"{etype:<22} {data.get('practice', ''):<6} {what:<20}"
    record = data.get("record") or {}
    if "cause" in data:  # a derived event: what the change means
        if "from" in data:
            line += f"  {_short(data['from'])} -> {_short(data['to'])}"
        elif data.get("changes"):
            line += "  " + ", ".join(data["changes"])
        elif "due_on" in data:
            line += f"  due {data['due_on']}, outstanding {data.get('amount_outstanding')}"
        elif "amount" in data:
            line += f"  amount {data['amount']}"
    elif etype.endswith(".updated"):
        parts = [f"{k}: {_short(o)} -> {_short(n)}"
                 for k, (o, n) in (data.get("changes") or {}).items() if k != "updated_at"]
        line += "  " + "; ".join(parts)
    elif "first_name" in record:
        line += f"  {record['first_name']} {record.get('last_name', '')}"
    elif "amount" in record:
        line += f"  amount {record['amount']}"
    elif "state" in record:
        line += f"  {record.get('reason', '')} ({record['state']})"
    return escape(line)


def safe(out: TextIO) -> TextIO:
    """``out`` behind a ``SafeWriter`` (it has what ``print`` needs of a text stream)."""
    return cast(TextIO, SafeWriter(out))
