"""The calibration tokens that scored each trial (the token schedule of multi-fidelity proxies).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trial_result") as batch:
        batch.add_column(sa.Column("tokens", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trial_result") as batch:
        batch.drop_column("tokens")
