"""Webhooks: the job's ``notify`` target, each key's signing secret, and the deliveries of job events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Existing keys get a fresh signing secret each, so every key can sign from the start.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("notify", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_key") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    for (key_id,) in connection.execute(sa.text("SELECT id FROM api_key")).all():
        connection.execute(
            sa.text("UPDATE api_key SET webhook_secret = :secret WHERE id = :id"),
            {"secret": f"whsec_{secrets.token_urlsafe(32)}", "id": key_id},
        )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_webhook_delivery_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
    )
    op.create_index(op.f("ix_webhook_delivery_job_id"), "webhook_delivery", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_delivery_job_id"), table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    with op.batch_alter_table("api_key") as batch:
        batch.drop_column("webhook_secret")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("notify")
