"""API keys: create, verify, list, revoke. Queries on the ``api_key`` table live here.

A key reads ``psk_<id>_<secret>``: the id names the row (and is safe to log and to show in
``prunesearch keys list``), the secret is 256 random bits. Only the SHA-256 digest of the whole key
is stored. A slow password hash (bcrypt, argon2) defends low-entropy secrets against guessing;
these are random, so a fast digest is as strong and keeps per-request verification cheap.

Each key also has a webhook signing secret (``whsec_...``, 256 random bits), which signs the
events of the jobs submitted with it (``service.notify``). It is stored as is: signing needs it.
The operator shows or rotates it with ``prunesearch keys webhook-secret KEY_ID [--rotate]``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.orm import Session

from service import repository
from service.db import AsyncReads
from service.errors import InvalidRequest, NotFound
from service.models import OWNER_LENGTH, ApiKey, Job, utcnow

__all__ = [
    "IssuedKey",
    "VerifiedKey",
    "any_active_key",
    "create_key",
    "list_keys",
    "revoke_key",
    "rotate_webhook_secret",
    "verify_key",
    "verify_key_and_stamp",
    "webhook_secret",
]

KEY_PREFIX = "psk_"
WEBHOOK_SECRET_PREFIX = "whsec_"
_ID_BYTES = 6  # 12 hex characters
_KEY = re.compile(r"psk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})")
# Owners appear in job rows, logs and CLI tables: keep them to a safe, printable alphabet.
_OWNER = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{OWNER_LENGTH - 1}}}")


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: ``key`` is the only copy of the secret; ``webhook_secret`` signs its events."""

    id: str
    owner: str
    key: str
    webhook_secret: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_owner(owner: str) -> str:
    if not _OWNER.fullmatch(owner):
        raise InvalidRequest(
            f"owner {owner!r} must be 1-{OWNER_LENGTH} characters of letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return owner


def create_key(session: Session, owner: str) -> IssuedKey:
    """Insert a new key for ``owner`` (flushes; the caller commits)."""
    key_id = secrets.token_hex(_ID_BYTES)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    signing = _new_webhook_secret()
    row = ApiKey(
        id=key_id, owner=check_owner(owner), secret_hash=_digest(key), webhook_secret=signing, created_at=utcnow()
    )
    session.add(row)
    session.flush()
    return IssuedKey(key_id, owner, key, signing)


def _new_webhook_secret() -> str:
    return f"{WEBHOOK_SECRET_PREFIX}{secrets.token_urlsafe(32)}"


def webhook_secret(session: Session, key_id: str) -> str:
    """The key's webhook signing secret (revoked keys keep theirs: their jobs' events are still signed).
    ``NotFound`` if there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}")
    if row.webhook_secret is None:  # not expected after migration 0006; give it one rather than fail
        row.webhook_secret = _new_webhook_secret()
        session.flush()
    return row.webhook_secret


def rotate_webhook_secret(session: Session, key_id: str) -> str:
    """A new signing secret for the key (flushes; the caller commits). Deliveries not yet sent are
    signed with the new one. ``NotFound`` if there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}")
    row.webhook_secret = _new_webhook_secret()
    session.flush()
    return row.webhook_secret


@dataclass(frozen=True)
class VerifiedKey:
    id: str
    owner: str


def verify_key(session: Session, key: str) -> VerifiedKey | None:
    """The active key ``key`` names, or ``None`` (malformed, unknown, wrong secret, revoked)."""
    return verify_key_and_stamp(session, key, None)[0]


# Built once: building a statement and its cache key costs more CPU than running it (the guard runs
# one per request). Plain table columns, so no ORM work per row either.
_keys = ApiKey.__table__.c
_KEY_ROW = select(_keys.owner, _keys.secret_hash, _keys.revoked_at).where(_keys.id == bindparam("key_id"))
_KEY_ROW_AND_STAMP = _KEY_ROW.add_columns(*repository.JOB_STAMP_COLUMNS).outerjoin_from(
    ApiKey.__table__, Job.__table__, Job.__table__.c.id == bindparam("job_id")
)


def verify_key_and_stamp(
    session: Session, key: str, job_id: str | None
) -> tuple[VerifiedKey | None, repository.JobStamp | None]:
    """``verify_key``, and the stamp of job ``job_id`` (``None``: no such job, or no job asked) in the
    same read: the API's guard needs both on every request, and one round trip is half the cost.

    The key's row is read on every call (by primary key), so a revoked key is refused by the next
    request, in every API process.
    """
    key_id = _key_id(key)
    if key_id is None:
        return None, None
    statement, parameters = _key_read(key_id, job_id)
    row = session.connection().execute(statement, parameters).one_or_none()
    return _verified(row, key, key_id, job_id)


async def verify_key_and_stamp_async(
    reads: AsyncReads, key: str, job_id: str | None
) -> tuple[VerifiedKey | None, repository.JobStamp | None]:
    """``verify_key_and_stamp`` in the event loop (PostgreSQL): the same read, the same checks."""
    key_id = _key_id(key)
    if key_id is None:
        return None, None
    statement, parameters = _key_read(key_id, job_id)
    return _verified(await reads.one_or_none(statement, parameters), key, key_id, job_id)


def _key_id(key: str) -> str | None:
    match = _KEY.fullmatch(key)
    return None if match is None else match.group(1)


def _key_read(key_id: str, job_id: str | None) -> tuple[Select[Any], dict[str, str]]:
    if job_id is None:
        return _KEY_ROW, {"key_id": key_id}
    return _KEY_ROW_AND_STAMP, {"key_id": key_id, "job_id": job_id}


def _verified(
    row: Sequence[Any] | None, key: str, key_id: str, job_id: str | None
) -> tuple[VerifiedKey | None, repository.JobStamp | None]:
    """The key and stamp from a row of ``_KEY_ROW`` (or ``_KEY_ROW_AND_STAMP``), if the key is valid."""
    if row is None:
        return None, None
    owner, secret_hash, revoked_at = row[0], row[1], row[2]
    if revoked_at is not None:
        return None, None
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if not hmac.compare_digest(secret_hash, _digest(key)):
        return None, None
    stamp = repository.JobStamp.from_columns(row[3:]) if job_id is not None else None
    return VerifiedKey(key_id, owner), stamp


def any_active_key(session: Session) -> bool:
    """Whether the server has keys, i.e. whether anonymous requests must be refused."""
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke at once (the next request with it gets 401). ``NotFound`` if there is no such key."""
    session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    row = session.get(ApiKey, key_id, populate_existing=True)
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}")
    return row
