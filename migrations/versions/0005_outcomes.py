"""outcomes: a numeric business outcome per labelled request row (revenue, a conversion, a cost),
and the denominator of a ratio outcome (e.g. visits, for revenue per visit)

Revision ID: 0005
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outcome", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("outcome_base", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_column("outcome_base")
        batch_op.drop_column("outcome")
