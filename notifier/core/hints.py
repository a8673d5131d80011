"""Dentally's own webhooks as hints: parsing, signatures, replay memory, coalescing, and the
adaptive poll interval. Pure: no IO, time is passed in.

A Dentally webhook never publishes anything on its own: it only says "look at this
resource now" (maybe naming an id). Polling stays the source of truth; these rules decide
when a hint makes a resource poll, how slowly a resource may poll while hints keep
arriving, and when their silence means the webhook is broken. Dentally's payload and
signature are undocumented (see dentally-api.md), so parsing is tolerant and the
signature's header, encoding and prefix are configurable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from notifier.core import resources

SILENT = "notifier.dentally_webhook.silent"
"""Published once when a resource's hints stopped while its polls still find changes."""

ACTIONS = {"created": "created", "create": "created", "updated": "updated",
           "update": "updated", "deleted": "deleted", "delete": "deleted",
           "destroyed": "deleted", "destroy": "deleted", "removed": "deleted"}

_ID_KEYS = ("id", "record_id", "object_id", "resource_id")


class HintError(ValueError):
    """A signed body that names no resource we know: answered 2xx, counted, ignored."""


@dataclass(frozen=True)
class Hint:
    resource: str
    """The resource's name in :mod:`notifier.core.resources` (``patients``)."""
    record_id: str | None = None
    action: str | None = None
    """``created``, ``updated`` or ``deleted`` when the body said so."""


def _snake(word: str) -> str:
    """``TreatmentPlan`` -> ``treatment_plan``; ``patient-updated`` -> ``patient_updated``."""
    word = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", word.strip())
    return re.sub(r"[^a-z0-9]+", "_", word.lower()).strip("_")


def resource_named(word: str) -> str | None:
    """The resource ``word`` names, singular or plural, in any case: ``Patient``,
    ``patients``, ``treatment-plan`` -> its table name, else None."""
    w = _snake(word)
    if w in resources.RESOURCES:
        return w
    return resources.BY_SINGULAR.get(w)


def _split_event(event: str) -> tuple[str | None, str | None]:
    """``patient.updated``, ``patient_updated``, ``PatientUpdated``, ``updated`` ->
    (resource or None, action or None)."""
    words = _snake(event).split("_")
    action = None
    if words and words[-1] in ACTIONS:
        action = ACTIONS[words[-1]]
        words = words[:-1]
    elif words and words[0] in ACTIONS:   # "updated.patient"
        action = ACTIONS[words[0]]
        words = words[1:]
    return (resource_named("_".join(words)) if words else None), action


_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _as_id(value: Any) -> str | None:
    """An id fit for a URL path (integers, GUIDs); anything else is no id."""
    if isinstance(value, str | int) and not isinstance(value, bool) and _ID.match(str(value)):
        return str(value)
    return None


def _id_of(node: Any) -> str | None:
    if isinstance(node, Mapping):
        for key in _ID_KEYS:
            if (found := _as_id(node.get(key))) is not None:
                return found
    return None


def parse_hint(body: bytes, known: Collection[str] | None = None) -> Hint:
    """What a Dentally webhook body names: a resource, maybe an id and an action.

    Shapes understood: ``{event, object, data}`` (observed), ``{event: "patient.updated",
    data: {id}}``, ``{type|topic|resource|resource_type|model: ..., id}``,
    ``{data: {patient: {...}}}`` and ``{patient: {...}}``. ``known`` restricts the result
    to the resources the practice polls. HintError says what was wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HintError("body is not JSON") from None
    if not isinstance(doc, dict):
        raise HintError("body is not a JSON object")
    resource: str | None = None
    action: str | None = None
    for key in ("object", "resource", "resource_type", "model", "object_type", "entity"):
        value = doc.get(key)
        if isinstance(value, Mapping):   # {"object": {"type": "patient", "id": 1}}
            value = value.get("type") or value.get("name")
        if isinstance(value, str) and (found := resource_named(value)):
            resource = found
            break
    for key in ("event", "event_type", "type", "topic", "action", "name"):
        value = doc.get(key)
        if isinstance(value, str):
            named, act = _split_event(value)
            resource = resource or named
            action = action or act
    data = doc.get("data")
    inner: Any = data
    wrapped = None
    for holder in (data, doc):
        if isinstance(holder, Mapping):
            for key, value in holder.items():
                if isinstance(value, Mapping) and (found := resource_named(str(key))):
                    wrapped = (found, value)
                    break
        if wrapped:
            break
    if wrapped is not None:
        resource = resource or wrapped[0]
        if wrapped[0] == resource:
            inner = wrapped[1]
    if resource is None:
        raise HintError("body names no known resource")
    if known is not None and resource not in known:
        raise HintError(f"resource {resource} is not polled for this practice")
    record_id = _id_of(inner)
    if record_id is None:
        singular = resources.get(resource).singular
        for node in (data, doc):
            if isinstance(node, Mapping):
                record_id = _as_id(node.get(f"{singular}_id"))
                if record_id is not None:
                    break
        if record_id is None and data is None:
            record_id = _id_of(doc)
        if record_id is None and isinstance(doc.get("object"), Mapping):
            record_id = _id_of(doc["object"])
    return Hint(resource, record_id, action)


# -- signatures -----------------------------------------------------------------------

Encoding = Literal["hex", "base64"]


@dataclass(frozen=True)
class Scheme:
    """How Dentally signs (unconfirmed, hence configurable): the header, the digest's
    encoding, and a prefix such as ``sha256=`` that is stripped when present."""

    header: str = "X-Dentally-Signature"
    encoding: Encoding = "hex"
    prefix: str = ""


def sign(secret: str, body: bytes, scheme: Scheme = Scheme()) -> str:
    """The header value Dentally (as configured) would send for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    text = digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode()
    return scheme.prefix + text


def _decode(value: str, scheme: Scheme) -> bytes | None:
    value = value.strip()
    for prefix in {scheme.prefix, "sha256="} - {""}:
        if value.lower().startswith(prefix.lower()):
            value = value[len(prefix):]
            break
    try:
        if scheme.encoding == "hex":
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def verify(secrets: Sequence[str], body: bytes, header: str | None,
           scheme: Scheme = Scheme()) -> bool:
    """Whether ``header`` is the HMAC-SHA256 of the raw ``body`` under one of ``secrets``
    (several while rotating). Constant time in the digest; a header that does not decode
    is simply wrong."""
    if not header or not secrets:
        return False
    given = _decode(header, scheme)
    if given is None or len(given) != hashlib.sha256().digest_size:
        return False
    ok = False
    for secret in secrets:
        want = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        ok |= hmac.compare_digest(want, given)
    return ok


class Replays:
    """Signed bodies seen within ``window`` seconds: a replay (or Dentally's duplicate)
    of one is ignored, so a captured webhook sent again costs no Dentally request.
    Bounded: the oldest are forgotten past ``capacity``."""

    def __init__(self, window: float, capacity: int = 100_000) -> None:
        self.window, self.capacity = window, capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def first(self, body: bytes, now: float) -> bool:
        """True the first time ``body`` is seen within the window (and remember it)."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.window and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        key = hashlib.sha256(body).digest()
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


# -- proxies --------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> list[Network]:
    """``["127.0.0.1", "10.0.0.0/8"]`` as networks; ValueError names a bad one."""
    out: list[Network] = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an IP address or network") from None
    return out


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[Network]) -> str:
    """The client as far as we can trust: the peer, unless it is a configured proxy, then
    ``X-Forwarded-For`` read from the right, skipping proxies we trust. A header from
    anyone else is ignored (it is whatever the sender wants it to be)."""
    addr = peer or "unknown"
    if not forwarded_for or not _trusted(addr, trusted):
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        addr = hop
        if not _trusted(hop, trusted):
            break
    return addr


# -- when a resource polls ------------------------------------------------------------

COALESCE = 1.0
"""At most one hint-triggered poll per resource per this many seconds."""


def trigger_wait(now: float, last_poll_started: float | None, gap: float = COALESCE) -> float:
    """Seconds until a hinted resource may poll: at once, unless a poll started within
    ``gap`` (then at its end; the hints meanwhile fold into that one poll)."""
    if last_poll_started is None:
        return 0.0
    return max(0.0, last_poll_started + gap - now)


class Mode(Enum):
    UNKNOWN = "unknown"    # no hint yet: poll at the normal interval
    HEALTHY = "healthy"    # hints arrive: poll at the backstop interval
    SILENT = "silent"      # hints stopped while changes went on: normal interval


@dataclass
class Silent:
    """What to publish when a resource's webhook went silent."""

    resource: str
    last_hint_at: float
    found_at: float
    silence_after: float

    def data(self) -> dict[str, Any]:
        return {"resource": self.resource, "last_hint_at": self.last_hint_at,
                "silence_after": self.silence_after,
                "action": "check the practice's webhooks in Dentally (Settings > "
                          "Developer > Webhooks: active, failed deliveries); polling is "
                          "back at its normal interval meanwhile"}


class HintState:
    """One resource's hints over time, and the poll interval they allow.

    While hints arrive the resource polls every ``backstop`` seconds (never faster than
    its normal interval). Silence alone is trusted (a quiet practice sends nothing); but a
    poll that finds changes when no hint came for ``silence_after`` means hints are being
    lost: back to the normal interval, and one :class:`Silent` to publish, until a hint
    arrives again."""

    def __init__(self, resource: str, backstop: float, silence_after: float) -> None:
        self.resource, self.backstop, self.silence_after = resource, backstop, silence_after
        self.mode = Mode.UNKNOWN
        self.last_hint_at: float | None = None
        self.hints = 0

    def hinted(self, now: float) -> None:
        self.last_hint_at = now
        self.hints += 1
        self.mode = Mode.HEALTHY

    def interval(self, normal: float) -> float:
        return max(normal, self.backstop) if self.mode is Mode.HEALTHY else normal

    def polled(self, now: float, found_changes: bool) -> Silent | None:
        """After a poll: a Silent the first time changes come without their hints."""
        if (self.mode is Mode.HEALTHY and found_changes and self.last_hint_at is not None
                and now - self.last_hint_at >= self.silence_after):
            self.mode = Mode.SILENT
            return Silent(self.resource, self.last_hint_at, now, self.silence_after)
        return None


# -- Dentally's own view of its webhooks (GET /v1/webhooks) ------------------------------

INACTIVE = "notifier.dentally_webhook.inactive"
"""Published when Dentally has switched one of the practice's webhooks off."""


@dataclass(frozen=True)
class Webhook:
    """One webhook as ``GET /v1/webhooks`` lists it (its URL left out: it may carry a
    token, and status shows what Redis holds)."""

    id: str
    active: bool | None
    failed_deliveries: int | None
    successful_deliveries: int | None
    last_delivered_at: str | None
    events: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "active": self.active,
                "failed_deliveries": self.failed_deliveries,
                "successful_deliveries": self.successful_deliveries,
                "last_delivered_at": self.last_delivered_at, "events": list(self.events)}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_webhooks(body: Any) -> list[Webhook]:
    """``{"webhooks": [...]}`` (or a bare list) as :class:`Webhook` rows; fields that are
    missing or of another type are None. ValueError when the body is no list at all."""
    rows = body.get("webhooks") if isinstance(body, Mapping) else body
    if not isinstance(rows, list):
        raise ValueError("no 'webhooks' list in the body")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            continue
        active = row.get("active")
        events = row.get("events")
        out.append(Webhook(
            str(row.get("id", i)), active if isinstance(active, bool) else None,
            _count(row.get("failed_deliveries")), _count(row.get("successful_deliveries")),
            str(row["last_delivered_at"]) if row.get("last_delivered_at") else None,
            tuple(str(e) for e in events) if isinstance(events, list) else ()))
    return out


def inactive(hooks: Sequence[Webhook]) -> list[Webhook]:
    """The webhooks Dentally has switched off (``active`` false, not merely unknown)."""
    return [w for w in hooks if w.active is False]
