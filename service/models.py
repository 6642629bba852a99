"""The service's tables: job, trial_result, api_key, webhook_delivery. Optuna's are Optuna's, never mapped here.

Migrations in ``migrations/versions`` must match these classes; ``service.migrate.check`` and the
migration tests fail on drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.states import JobStatus

# Our Alembic bookkeeping table. Optuna stamps the default ``alembic_version`` in the same
# database, so ours must have another name or the two migration histories overwrite each other.
VERSION_TABLE = "prunesearch_alembic_version"

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


OWNER_LENGTH = 64
IDEMPOTENCY_KEY_LENGTH = 255
IDEMPOTENCY_KEY_COLUMN_LENGTH = OWNER_LENGTH + 1 + IDEMPOTENCY_KEY_LENGTH


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back in UTC.

    SQLite keeps no offset, so values are written as UTC and read back with UTC attached; without
    this, SQLite rows would return naive datetimes and PostgreSQL rows aware ones.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One compression job. The row is the source of truth; tasks carry only its id."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED.value)
    model: Mapped[str] = mapped_column(String(4096))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(OWNER_LENGTH), index=True)
    # Scoped by owner ("<owner>/<key>", "/<key>" when anonymous), so two tenants' keys never meet.
    idempotency_key: Mapped[str | None] = mapped_column(String(IDEMPOTENCY_KEY_COLUMN_LENGTH), unique=True)
    trials_total: Mapped[int] = mapped_column(Integer)
    trials_completed: Mapped[int] = mapped_column(Integer, default=0)
    trials_failed: Mapped[int] = mapped_column(Integer, default=0)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Verification, proxy trust and export figures, written by the worker when the search ends.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the job does after its trials, while it does it: {"name": "recovery", "done": 3, "total": 400}.
    phase: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the reaper last re-sent this job's task (null: only the submission sent one).
    requeued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Service metadata, not part of the spec: {"url": ..., "key_id": ...} (the key whose secret signs).
    notify: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    deliveries: Mapped[list[WebhookDelivery]] = relationship(
        lazy="selectin", order_by="WebhookDelivery.id", viewonly=True
    )


class ApiKey(Base):
    """An API key. Only a SHA-256 digest of the secret is kept; the key is shown once, at creation."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    # Signs this key's webhook events (HMAC-SHA256). Kept as is, unlike the key: signing needs it.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TrialResult(Base):
    """One trial of a job, keyed by (job, Optuna trial number) so redelivered trials overwrite."""

    __tablename__ = "trial_result"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("job.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(32))
    arch: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    param_count: Mapped[int | None] = mapped_column(BigInteger)
    param_ratio: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float)
    # All objective values of a multi-objective trial, in the study's objective order.
    values: Mapped[list[float] | None] = mapped_column(JSON)
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    verified: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    duration_s: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # Calibration tokens that scored the trial (the token schedule of a multi-fidelity proxy); null: all.
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Latency jobs: the time per step predicted from the measured latency table; null for other jobs.
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One webhook event of a job (``job.succeeded``, ...) and how its delivery went.

    Opened in the same transaction as the job's terminal transition, so each transition has one;
    each POST first claims its attempt with a guarded UPDATE, so a redelivered task never sends twice.
    """

    __tablename__ = "webhook_delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("job.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
