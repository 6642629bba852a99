"""Signing a webhook event: HMAC-SHA256 over ``"{timestamp}." + raw body`` under the key's secret.

The timestamp is signed with the body, so a receiver that rejects old timestamps (five minutes is
the usual tolerance) also rejects a replayed event; a replay with a new timestamp fails the
signature. ``verify`` is the receiver's recipe, the one README "Webhooks" shows.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-PruneSearch-Signature"
TIMESTAMP_HEADER = "X-PruneSearch-Timestamp"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-PruneSearch-Signature`` value: ``sha256=<hex>``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: str,
    body: bytes,
    *,
    timestamp: str,
    signature: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``signature`` signs ``body`` at ``timestamp`` under ``secret``, and the timestamp is recent."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)
