"""Standard Webhooks signatures (https://www.standardwebhooks.com).

The HMAC key is the base64-decoded part of a ``whsec_`` secret, and the signed content is
``id.timestamp.body`` with the exact bytes sent. Several secrets (rotation) give several
space-separated signatures; a verifier accepts the message if any one matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret; ValueError (without the secret in it) if it is malformed."""
    raw = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ValueError("webhook secret is not base64 after 'whsec_'") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64>`` per secret."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(s), content, hashlib.sha256).digest())
        .decode() for s in secrets)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
            ) -> dict[str, str]:
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secrets, msg_id, timestamp, body)}


def verify(secrets: Sequence[str], header: dict[str, str], body: bytes, now: float,
           tolerance: float = 300.0) -> bool:
    """Whether ``body`` with these headers was signed by one of ``secrets`` within
    ``tolerance`` seconds of ``now`` (what a receiver does; used by the demo's)."""
    try:
        msg_id, ts = header["webhook-id"], int(header["webhook-timestamp"])
        given = header["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    expected = sign(secrets, msg_id, ts, body).split()
    return any(hmac.compare_digest(g, e) for g in given for e in expected)
