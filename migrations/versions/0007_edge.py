"""edge: trusted types stored with a pipeline version

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("pipeline_versions") as batch:
        batch.add_column(sa.Column("trusted_types", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_versions") as batch:
        batch.drop_column("trusted_types")
