"""Keep NaN and infinity out of storage: JSON has no spelling for them and responses refuse them.

A proxy that returns NaN is a fact about that trial, recorded as ``null``; it must never turn a
later ``GET`` into a 500 or make PostgreSQL reject the row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, NaN or infinite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def scrub(value: Any) -> Any:
    """A copy of a JSON-like value with every non-finite float replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """The engine's JSON serializer: scrubbed, and strict so anything exotic fails loudly here."""
    return json.dumps(scrub(value), allow_nan=False, separators=(",", ":"))
