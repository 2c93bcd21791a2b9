"""paired_outputs.champion_proba / challenger_proba: each arm's class probabilities for > 2 classes

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

A JSON object per arm and row keyed by the class as text ({"setosa": 0.97, "versicolor": 0.02, ...}),
NULL for binary classifiers (champion_score already holds P(second class)), regressors, and models
without probabilities. The multi-class log loss, Brier score and one-vs-rest ROC AUC read it
(storage.quality); rows stored before keep NULL and count as "no probabilities".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("paired_outputs") as batch:
        batch.add_column(sa.Column("champion_proba", _json(), nullable=True))
        batch.add_column(sa.Column("challenger_proba", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("paired_outputs") as batch:
        batch.drop_column("challenger_proba")
        batch.drop_column("champion_proba")
