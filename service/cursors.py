"""Opaque pagination cursors: urlsafe base64 of a small JSON list of the last row's sort keys.

Opaque so clients cannot build them and we can change the keys later; validated on the way in so
a corrupted cursor is a 400, not a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from service.errors import MalformedRequest


def encode(*keys: str | int) -> str:
    raw = json.dumps(list(keys), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> list[object]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        keys = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as error:
        raise MalformedRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page") from error
    if not isinstance(keys, list):
        raise MalformedRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")
    return keys


def encode_job(created_at: datetime, job_id: str) -> str:
    return encode(created_at.isoformat(), job_id)


def decode_job(cursor: str) -> tuple[datetime, str]:
    keys = _decode(cursor)
    if len(keys) == 2 and isinstance(keys[0], str) and isinstance(keys[1], str):
        try:
            created_at = datetime.fromisoformat(keys[0])
        except ValueError:
            pass
        else:
            if created_at.tzinfo is not None:
                return created_at, keys[1]
    raise MalformedRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")


def encode_trial(number: int) -> str:
    return encode(number)


def decode_trial(cursor: str) -> int:
    keys = _decode(cursor)
    if len(keys) == 1 and isinstance(keys[0], int) and not isinstance(keys[0], bool):
        return keys[0]
    raise MalformedRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")
