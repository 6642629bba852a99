"""API keys, owner-scoped idempotency keys, and the reaper's requeue mark.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Idempotency keys become "<owner>/<key>" (anonymous: "/<key>") so one tenant's key can never
replay another tenant's job; existing (anonymous) keys are rewritten to the new form.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
    )
    op.create_index(op.f("ix_api_key_owner"), "api_key", ["owner"], unique=False)
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column(
            "idempotency_key", existing_type=sa.String(length=255), type_=sa.String(length=320), existing_nullable=True
        )
    op.execute("UPDATE job SET idempotency_key = '/' || idempotency_key WHERE idempotency_key IS NOT NULL")


def downgrade() -> None:
    # Keys of keyed owners cannot be unscoped without risking collisions between owners: dropped.
    op.execute("UPDATE job SET idempotency_key = NULL WHERE idempotency_key NOT LIKE '/%'")
    op.execute("UPDATE job SET idempotency_key = substr(idempotency_key, 2) WHERE idempotency_key IS NOT NULL")
    with op.batch_alter_table("job") as batch:
        batch.alter_column(
            "idempotency_key", existing_type=sa.String(length=320), type_=sa.String(length=255), existing_nullable=True
        )
        batch.drop_column("requeued_at")
    op.drop_index(op.f("ix_api_key_owner"), table_name="api_key")
    op.drop_table("api_key")
