"""split salt: a per-rollout secret key for the sticky split's hash

Revision ID: 0008
Revises: 0002
Create Date: 2026-12-05

Rollouts started from now on get a random salt; those already stored keep NULL, which the router
reads as "the unkeyed hash of before", so no routing key of a rollout in progress changes arm.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("split_salt", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("split_salt")
