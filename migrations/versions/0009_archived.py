"""archived: pipeline versions and deployments can be archived (kept for their history, not used)

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-06

An archived deployment is no longer routed (clients get deployment_not_found) and takes no new
rollout; an archived pipeline version can be no new deployment's champion nor a rollout's challenger.
Both stay readable, with their rollouts, pairs and events, and can be restored (archived_at = NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("pipeline_versions", "deployments"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("archived_at", sa.DateTime(timezone=False), nullable=True))


def downgrade() -> None:
    for table in ("deployments", "pipeline_versions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("archived_at")
