"""The predicted latency of each trial of a latency job (``target.latency_ratio`` or the latency objective).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trial_result") as batch:
        batch.add_column(sa.Column("latency_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trial_result") as batch:
        batch.drop_column("latency_ms")
