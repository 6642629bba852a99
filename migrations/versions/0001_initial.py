"""The service's tables: job and trial_result.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Hand-checked against service/models.py. Timestamps are plain ``DateTime(timezone=True)`` here;
the models' ``UTCDateTime`` only converts values in Python and needs no DDL of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=4096), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("trials_total", sa.Integer(), nullable=False),
        sa.Column("trials_completed", sa.Integer(), nullable=False),
        sa.Column("trials_failed", sa.Integer(), nullable=False),
        sa.Column("best", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_job_idempotency_key")),
    )
    # (created_at, id) is the keyset of GET /v1/jobs, newest first.
    op.create_index("ix_job_created_at_id", "job", ["created_at", "id"], unique=False)
    op.create_index(op.f("ix_job_owner"), "job", ["owner"], unique=False)
    op.create_index(op.f("ix_job_status"), "job", ["status"], unique=False)

    op.create_table(
        "trial_result",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("arch", sa.JSON(), nullable=True),
        sa.Column("param_count", sa.BigInteger(), nullable=True),
        sa.Column("param_ratio", sa.Float(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=True),
        sa.Column("verified", sa.JSON(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_trial_result_job_id_job"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trial_result")),
        # A redelivered trial overwrites its row instead of adding one (see repository.record_trial).
        sa.UniqueConstraint("job_id", "number", name=op.f("uq_trial_result_job_id_number")),
    )
    op.create_index(op.f("ix_trial_result_job_id"), "trial_result", ["job_id"], unique=False)


def downgrade() -> None:
    # Only our tables: Optuna's tables and its alembic_version in the same database stay.
    op.drop_index(op.f("ix_trial_result_job_id"), table_name="trial_result")
    op.drop_table("trial_result")
    op.drop_index(op.f("ix_job_status"), table_name="job")
    op.drop_index(op.f("ix_job_owner"), table_name="job")
    op.drop_index("ix_job_created_at_id", table_name="job")
    op.drop_table("job")
