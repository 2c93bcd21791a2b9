"""deployments.batching: per-deployment adaptive batching of live requests (on/off, delay, rows)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

NULL means the defaults (storage.entities.BatchingConfig()): deployments created before keep them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(
            sa.Column(
                "batching",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("batching")
